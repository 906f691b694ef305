// Rotary embedding with the KV-cache write, and paged attention over block tables.
//
// Cache layout per layer: [block][kv_head][slot][head_dim] bf16, the engine's layout on every device.

// For token row t at absolute position pos[t]: adds the qkv bias (if any), rotates q and k ("rotate-half" pairing:
// element i with i + head_dim/2), writes q to q_out (f32) and k, v to the cache slot `slots[t]`
// (= block · block_size + offset). qkv rows are [n_heads·hd | n_kv·hd | n_kv·hd] f32. Grid (tokens, n_heads + 2·n_kv):
// block (t, y) rotates query head y, key head y − n_heads, or copies value head y − n_heads − n_kv, so a decode row
// spreads over as many blocks as it has heads.
extern "C" __global__ void rope_write_kv(const float* qkv, const float* bias, const int* pos, const int* slots,
                                         const float* inv_freq, float* q_out, bf16* k_cache, bf16* v_cache,
                                         int n_heads, int n_kv, int hd, int block_size) {
    const int t = blockIdx.x, y = blockIdx.y;
    const int width = (n_heads + 2 * n_kv) * hd;
    const float* row = qkv + (size_t)t * width;
    const int half = hd / 2;
    const int slot = slots[t];
    const int block = slot / block_size, off = slot % block_size;
    const int base = y * hd;
    if (y >= n_heads + n_kv) {
        // Values, unrotated.
        bf16* v = v_cache + (((size_t)block * n_kv + (y - n_heads - n_kv)) * block_size + off) * hd;
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            float x = row[base + d];
            if (bias) x += bias[base + d];
            v[d] = f2bf(x);
        }
        return;
    }
    const float p = (float)pos[t];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float a = row[base + i], b = row[base + i + half];
        if (bias) { a += bias[base + i]; b += bias[base + i + half]; }
        float s, c;
        sincosf(p * inv_freq[i], &s, &c);
        float ra = a * c - b * s, rb = b * c + a * s;
        if (y < n_heads) {
            float* qo = q_out + (size_t)t * n_heads * hd + base;
            qo[i] = ra;
            qo[i + half] = rb;
        } else {
            bf16* k = k_cache + (((size_t)block * n_kv + (y - n_heads)) * block_size + off) * hd;
            k[i] = f2bf(ra);
            k[i + half] = f2bf(rb);
        }
    }
}

#define ATTN_WARPS 16
#define MAX_HD_PER_LANE 8

// Causal attention for one query token and one query head per block (ATTN_WARPS warps). The token at absolute
// position pos[t] attends to positions 0..=pos[t] of its sequence, whose blocks are block_tables[table_off[t]..].
// Warps take keys round-robin, each with an online softmax over its keys; the warps' partial results merge at the
// end. Lane l of a warp holds dimensions l, l + 32, ... of the head. With `rows`, block x serves token row rows[x]
// (the decode rows of a mixed batch); without, row x. q is f32 [T, n_heads·hd]; out is bf16
// [T, n_heads·hd]. head_dim is at most 32 · MAX_HD_PER_LANE.
extern "C" __global__ void paged_attention(const float* q, const bf16* k_cache, const bf16* v_cache,
                                           const int* block_tables, const int* table_off, const int* pos,
                                           const int* rows, bf16* out, int n_heads, int n_kv, int hd,
                                           int block_size, float scale) {
    __shared__ float s_m[ATTN_WARPS], s_l[ATTN_WARPS];
    __shared__ float s_acc[ATTN_WARPS][32 * MAX_HD_PER_LANE];
    int t = rows ? rows[blockIdx.x] : blockIdx.x, h = blockIdx.y;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int per_lane = (hd + 31) / 32;
    int kh = h / (n_heads / n_kv);
    const float* qh = q + ((size_t)t * n_heads + h) * hd;
    float qr[MAX_HD_PER_LANE];
    for (int c = 0; c < per_lane; c++) {
        int d = c * 32 + lane;
        qr[c] = d < hd ? qh[d] * scale : 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    float acc[MAX_HD_PER_LANE];
    for (int c = 0; c < MAX_HD_PER_LANE; c++) acc[c] = 0.0f;
    const int* table = block_tables + table_off[t];
    int n_keys = pos[t] + 1;
    for (int j = warp; j < n_keys; j += ATTN_WARPS) {
        int block = table[j / block_size], off = j % block_size;
        size_t at = (((size_t)block * n_kv + kh) * block_size + off) * hd;
        float dot = 0.0f;
        for (int c = 0; c < per_lane; c++) {
            int d = c * 32 + lane;
            if (d < hd) dot += qr[c] * bf2f(k_cache[at + d]);
        }
        dot = warp_sum(dot);
        float m_new = fmaxf(m, dot);
        float correction = __expf(m - m_new);
        float p = __expf(dot - m_new);
        l = l * correction + p;
        for (int c = 0; c < per_lane; c++) {
            int d = c * 32 + lane;
            acc[c] = acc[c] * correction + (d < hd ? p * bf2f(v_cache[at + d]) : 0.0f);
        }
        m = m_new;
    }
    if (lane == 0) { s_m[warp] = m; s_l[warp] = l; }
    for (int c = 0; c < per_lane; c++) s_acc[warp][c * 32 + lane] = acc[c];
    __syncthreads();
    if (warp == 0) {
        float gm = NEG_INF;
        for (int w = 0; w < ATTN_WARPS; w++) gm = fmaxf(gm, s_m[w]);
        float gl = 0.0f;
        float o[MAX_HD_PER_LANE];
        for (int c = 0; c < per_lane; c++) o[c] = 0.0f;
        for (int w = 0; w < ATTN_WARPS; w++) {
            if (s_m[w] == NEG_INF) continue;
            float f = __expf(s_m[w] - gm);
            gl += s_l[w] * f;
            for (int c = 0; c < per_lane; c++) o[c] += s_acc[w][c * 32 + lane] * f;
        }
        bf16* oh = out + ((size_t)t * n_heads + h) * hd;
        for (int c = 0; c < per_lane; c++) {
            int d = c * 32 + lane;
            if (d < hd) oh[d] = f2bf(o[c] / gl);
        }
    }
}

#define DEC_WARPS 16
#define DEC_MIN_SPLIT_KEYS 256

// Eight bf16 (one 16-byte load) to floats.
__device__ __forceinline__ void unpack8(uint4 w, float* f) {
    unsigned u[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __uint_as_float(u[i] << 16);
        f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
    }
}

// Decode attention for 64- and 128-dim heads: what `paged_attention` computes, with more keys in flight and the keys
// of long contexts split over several blocks (flash-decoding). Grid (rows, query-head groups, splits): a block serves
// `hpb` query heads — every head of one KV head under grouped-query attention, so the block's warps read each key
// and value once from memory and share it through L1 — with DEC_WARPS / hpb warps per head. A warp is four groups of
// 8 lanes; a group takes two keys per step (lane i holding dimensions HD/8 · i .. HD/8 · (i + 1), read with 16-byte
// loads) with its own online softmax (in log2 units). The four groups of a warp merge through shuffles, a head's
// warps through shared memory. A row's keys are cut into `active` ranges of at least DEC_MIN_SPLIT_KEYS (one range for
// short contexts: that block writes the output itself); with several, each block writes each head's (max, sum,
// unnormalised output) to `partial` and the last block of the row and group to finish (counted in `counters`, which
// it resets to 0 for the next launch) merges them.
template <int HD>
__device__ __forceinline__ void decode_attention(const float* q, const bf16* k_cache, const bf16* v_cache,
                                                 const int* block_tables, const int* table_off, const int* pos,
                                                 const int* rows, bf16* out, float* partial, unsigned* counters,
                                                 int n_heads, int n_kv, int block_size, float scale, int hpb) {
    constexpr int DPL = HD / 8;
    __shared__ float s_m[DEC_WARPS], s_l[DEC_WARPS];
    __shared__ float s_acc[DEC_WARPS][HD];
    __shared__ bool s_last;
    const int t = rows ? rows[blockIdx.x] : blockIdx.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    // This warp's head, and its place among the head's warps.
    const int wph = DEC_WARPS / hpb, h = blockIdx.y * hpb + warp / wph, wi = warp % wph;
    const int li = lane & 7, gi = lane >> 3;
    const int kh = h / (n_heads / n_kv);
    const float scale_log2 = scale * 1.4426950408889634f;
    const float* qh = q + ((size_t)t * n_heads + h) * HD + li * DPL;
    float qr[DPL];
#pragma unroll
    for (int c = 0; c < DPL; c += 4) {
        float4 v = *(const float4*)(qh + c);
        qr[c] = v.x * scale_log2;
        qr[c + 1] = v.y * scale_log2;
        qr[c + 2] = v.z * scale_log2;
        qr[c + 3] = v.w * scale_log2;
    }
    float m = NEG_INF, l = 0.0f, acc[DPL];
#pragma unroll
    for (int i = 0; i < DPL; i++) acc[i] = 0.0f;
    const int* table = block_tables + table_off[t];
    const int n_keys = pos[t] + 1;
    // This block's range of keys: every block of the row computes the same cut.
    const int splits = gridDim.z, z = blockIdx.z;
    const int step = wph * 8;
    const int per_split = max(DEC_MIN_SPLIT_KEYS, ((n_keys + splits - 1) / splits + step - 1) / step * step);
    const int active = (n_keys + per_split - 1) / per_split;
    if (z >= active) return;
    const int k_begin = z * per_split, k_end = min(n_keys, k_begin + per_split);
    // The loop bound is the same for the whole warp (its shuffles need every lane): a step takes keys jb .. jb + 8,
    // group gi the keys jb + gi and jb + 4 + gi; a key past the end loads key jb again (finite) and weighs nothing.
    for (int jb = k_begin + wi * 8; jb < k_end; jb += step) {
        const int j0 = jb + gi, j1 = jb + 4 + gi;
        const bool has0 = j0 < k_end, has1 = j1 < k_end;
        const int a0 = has0 ? j0 : jb, a1 = has1 ? j1 : jb;
        const size_t at0 = (((size_t)table[a0 / block_size] * n_kv + kh) * block_size + a0 % block_size) * HD + li * DPL;
        const size_t at1 = (((size_t)table[a1 / block_size] * n_kv + kh) * block_size + a1 % block_size) * HD + li * DPL;
        uint4 kw0[DPL / 8], kw1[DPL / 8], vw0[DPL / 8], vw1[DPL / 8];
#pragma unroll
        for (int c = 0; c < DPL / 8; c++) {
            kw0[c] = ((const uint4*)(k_cache + at0))[c];
            kw1[c] = ((const uint4*)(k_cache + at1))[c];
            vw0[c] = ((const uint4*)(v_cache + at0))[c];
            vw1[c] = ((const uint4*)(v_cache + at1))[c];
        }
        float d0 = 0.0f, d1 = 0.0f;
#pragma unroll
        for (int c = 0; c < DPL / 8; c++) {
            float k0[8], k1[8];
            unpack8(kw0[c], k0);
            unpack8(kw1[c], k1);
#pragma unroll
            for (int i = 0; i < 8; i++) {
                d0 += qr[c * 8 + i] * k0[i];
                d1 += qr[c * 8 + i] * k1[i];
            }
        }
#pragma unroll
        for (int off = 1; off < 8; off <<= 1) {
            d0 += __shfl_xor_sync(0xffffffffu, d0, off);
            d1 += __shfl_xor_sync(0xffffffffu, d1, off);
        }
        if (!has0) d0 = NEG_INF;
        if (!has1) d1 = NEG_INF;
        const float m_new = fmaxf(m, fmaxf(d0, d1));
        // Nothing seen yet (every key so far past the end): subtract 0 so the weights are 0, not NaN.
        const float base = m_new == NEG_INF ? 0.0f : m_new;
        const float corr = exp2f(m - base), p0 = exp2f(d0 - base), p1 = exp2f(d1 - base);
        l = l * corr + p0 + p1;
#pragma unroll
        for (int c = 0; c < DPL / 8; c++) {
            float v0[8], v1[8];
            unpack8(vw0[c], v0);
            unpack8(vw1[c], v1);
#pragma unroll
            for (int i = 0; i < 8; i++) acc[c * 8 + i] = acc[c * 8 + i] * corr + p0 * v0[i] + p1 * v1[i];
        }
        m = m_new;
    }
    // The warp's four groups (lanes li, li + 8, li + 16, li + 24) merge; a group without keys weighs nothing.
    float mw = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 8));
    mw = fmaxf(mw, __shfl_xor_sync(0xffffffffu, mw, 16));
    const float f = m == NEG_INF ? 0.0f : exp2f(m - mw);
    l *= f;
    l += __shfl_xor_sync(0xffffffffu, l, 8);
    l += __shfl_xor_sync(0xffffffffu, l, 16);
#pragma unroll
    for (int i = 0; i < DPL; i++) {
        float a = acc[i] * f;
        a += __shfl_xor_sync(0xffffffffu, a, 8);
        a += __shfl_xor_sync(0xffffffffu, a, 16);
        acc[i] = a;
    }
    if (lane < 8) {
#pragma unroll
        for (int i = 0; i < DPL; i++) s_acc[warp][li * DPL + i] = acc[i];
        if (lane == 0) {
            s_m[warp] = mw;
            s_l[warp] = l;
        }
    }
    __syncthreads();
    // Each head's warps merge; with several ranges, each head's result is published for the last block to merge.
    for (int e = threadIdx.x; e < hpb * HD; e += blockDim.x) {
        const int hh = e / HD, d = e % HD, head = blockIdx.y * hpb + hh;
        float gm = NEG_INF, gl = 0.0f, o = 0.0f;
        for (int w = hh * wph; w < (hh + 1) * wph; w++) gm = fmaxf(gm, s_m[w]);
        for (int w = hh * wph; w < (hh + 1) * wph; w++) {
            if (s_m[w] == NEG_INF) continue;
            float fw = exp2f(s_m[w] - gm);
            gl += s_l[w] * fw;
            o += s_acc[w][d] * fw;
        }
        if (active == 1) {
            out[((size_t)t * n_heads + head) * HD + d] = f2bf(o / gl);
            continue;
        }
        float* mine = partial + (((size_t)blockIdx.x * n_heads + head) * splits + z) * (HD + 2);
        mine[d] = o;
        if (d == 0) {
            mine[HD] = gm;
            mine[HD + 1] = gl;
        }
    }
    if (active == 1) return;
    const size_t group = (size_t)blockIdx.x * gridDim.y + blockIdx.y;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(&counters[group], 1u) == (unsigned)(active - 1);
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    for (int e = threadIdx.x; e < hpb * HD; e += blockDim.x) {
        const int d = e % HD, head = blockIdx.y * hpb + e / HD;
        // Other blocks wrote these: read around the (incoherent) L1.
        const volatile float* parts = partial + ((size_t)blockIdx.x * n_heads + head) * splits * (HD + 2);
        float m_all = NEG_INF;
        for (int i = 0; i < active; i++) m_all = fmaxf(m_all, parts[i * (HD + 2) + HD]);
        float sum = 0.0f, acc_all = 0.0f;
        for (int i = 0; i < active; i++) {
            float f = exp2f(parts[i * (HD + 2) + HD] - m_all);
            sum += parts[i * (HD + 2) + HD + 1] * f;
            acc_all += parts[i * (HD + 2) + d] * f;
        }
        out[((size_t)t * n_heads + head) * HD + d] = f2bf(acc_all / sum);
    }
    if (threadIdx.x == 0) counters[group] = 0;
}

#define DECODE_ARGS                                                                                                 \
    const float *q, const bf16 *k_cache, const bf16 *v_cache, const int *block_tables, const int *table_off,         \
        const int *pos, const int *rows, bf16 *out, float *partial, unsigned *counters, int n_heads, int n_kv,       \
        int block_size, float scale, int hpb
#define DECODE_PASS                                                                                                 \
    q, k_cache, v_cache, block_tables, table_off, pos, rows, out, partial, counters, n_heads, n_kv, block_size, scale, \
        hpb

// Grid (rows, query heads / hpb, splits), 32 · DEC_WARPS threads; arguments as `paged_attention` (without head_dim),
// plus with more than one split `partial` ([rows][heads][splits][HD + 2] f32) and `counters` ([rows][head groups],
// zero), and `hpb`, the query heads a block serves (dividing DEC_WARPS and the heads per KV head).
extern "C" __global__ void __launch_bounds__(32 * DEC_WARPS) decode_attention_hd64(DECODE_ARGS) {
    decode_attention<64>(DECODE_PASS);
}
extern "C" __global__ void __launch_bounds__(32 * DEC_WARPS) decode_attention_hd128(DECODE_ARGS) {
    decode_attention<128>(DECODE_PASS);
}

#define TQ 32
#define TK 32
#define TILE_MAX_HD 128

// Causal attention for a tile of up to TQ consecutive query rows of one sequence and one query head per block
// (256 threads): prefill chunks. tiles[4·b ..] = (first row, rows, block-table offset, position of the first row).
// Key tiles of TK positions stream through shared memory with an online softmax; thread i owns query row i / 8 of
// the tile, its scores for keys (i % 8) + 8·j and its output dimensions (i % 8) + 8·j. head_dim ≤ TILE_MAX_HD and a
// multiple of 8.
extern "C" __global__ void __launch_bounds__(256) prefill_attention(
    const float* q, const bf16* k_cache, const bf16* v_cache, const int* block_tables, const int* tiles, bf16* out,
    int n_heads, int n_kv, int hd, int block_size, float scale) {
    __shared__ float s_q[TQ][TILE_MAX_HD];
    __shared__ bf16 s_k[TK][TILE_MAX_HD + 2];
    __shared__ bf16 s_v[TK][TILE_MAX_HD];
    __shared__ float s_p[TQ][TK + 1];
    const int* tile = tiles + 4 * blockIdx.x;
    int row0 = tile[0], n_rows = tile[1], pos0 = tile[3];
    const int* table = block_tables + tile[2];
    int h = blockIdx.y, kh = h / (n_heads / n_kv);
    int tid = threadIdx.x, r = tid >> 3, sub = tid & 7;
    int dims_per_thread = hd / 8;

    for (int i = tid; i < TQ * hd; i += 256) {
        int rr = i / hd, d = i % hd;
        s_q[rr][d] = rr < n_rows ? q[((size_t)(row0 + rr) * n_heads + h) * hd + d] * scale : 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    float acc[TILE_MAX_HD / 8];
    for (int i = 0; i < TILE_MAX_HD / 8; i++) acc[i] = 0.0f;
    int q_pos = pos0 + r;
    int last_pos = pos0 + n_rows - 1;
    for (int k0 = 0; k0 <= last_pos; k0 += TK) {
        __syncthreads();
        for (int i = tid; i < TK * hd; i += 256) {
            int kk = i / hd, d = i % hd, kp = k0 + kk;
            bf16 kv = 0, vv = 0;
            if (kp <= last_pos) {
                size_t at = (((size_t)table[kp / block_size] * n_kv + kh) * block_size + kp % block_size) * hd + d;
                kv = k_cache[at];
                vv = v_cache[at];
            }
            s_k[kk][d] = kv;
            s_v[kk][d] = vv;
        }
        __syncthreads();
        // Scores for this thread's 4 keys of its row.
        float sc[TK / 8];
        float tile_max = NEG_INF;
        for (int j = 0; j < TK / 8; j++) {
            int kk = sub + 8 * j, kp = k0 + kk;
            float dot = 0.0f;
            for (int d = 0; d < hd; d++) dot += s_q[r][d] * bf2f(s_k[kk][d]);
            bool visible = r < n_rows && kp <= q_pos;
            sc[j] = visible ? dot : NEG_INF;
            tile_max = fmaxf(tile_max, sc[j]);
        }
        for (int o = 1; o < 8; o <<= 1) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, o));
        float m_new = fmaxf(m, tile_max);
        float correction = (m == NEG_INF) ? 0.0f : __expf(m - m_new);
        float row_sum = 0.0f;
        for (int j = 0; j < TK / 8; j++) {
            float p = (sc[j] == NEG_INF) ? 0.0f : __expf(sc[j] - m_new);
            s_p[r][sub + 8 * j] = p;
            row_sum += p;
        }
        for (int o = 1; o < 8; o <<= 1) row_sum += __shfl_xor_sync(0xffffffffu, row_sum, o);
        l = l * correction + row_sum;
        m = m_new;
        __syncwarp();
        for (int i = 0; i < dims_per_thread; i++) {
            int d = sub + 8 * i;
            float a = acc[i] * correction;
            for (int kk = 0; kk < TK; kk++) a += s_p[r][kk] * bf2f(s_v[kk][d]);
            acc[i] = a;
        }
    }
    if (r < n_rows) {
        bf16* o = out + ((size_t)(row0 + r) * n_heads + h) * hd;
        for (int i = 0; i < dims_per_thread; i++) o[sub + 8 * i] = f2bf(acc[i] / l);
    }
}
