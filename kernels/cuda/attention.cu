// Rotary embedding with the KV-cache write, and paged attention over block tables.
//
// Cache layout per layer: [block][kv_head][slot][head_dim] bf16, the engine's layout on every device.

// For token row t at absolute position pos[t]: adds the qkv bias (if any), rotates q and k ("rotate-half" pairing:
// element i with i + head_dim/2), writes q to q_out (f32) and k, v to the cache slot `slots[t]`
// (= block · block_size + offset). qkv rows are [n_heads·hd | n_kv·hd | n_kv·hd] f32. One block per token.
extern "C" __global__ void rope_write_kv(const float* qkv, const float* bias, const int* pos, const int* slots,
                                         const float* inv_freq, float* q_out, bf16* k_cache, bf16* v_cache,
                                         int n_heads, int n_kv, int hd, int block_size) {
    int t = blockIdx.x;
    int width = (n_heads + 2 * n_kv) * hd;
    const float* row = qkv + (size_t)t * width;
    int half = hd / 2;
    float p = (float)pos[t];
    int slot = slots[t];
    int block = slot / block_size, off = slot % block_size;
    // Rotated pairs of q and k heads.
    for (int idx = threadIdx.x; idx < (n_heads + n_kv) * half; idx += blockDim.x) {
        int h = idx / half, i = idx % half;
        int base = h * hd;
        float a = row[base + i], b = row[base + i + half];
        if (bias) { a += bias[base + i]; b += bias[base + i + half]; }
        float s, c;
        sincosf(p * inv_freq[i], &s, &c);
        float ra = a * c - b * s, rb = b * c + a * s;
        if (h < n_heads) {
            float* q = q_out + (size_t)t * n_heads * hd + base;
            q[i] = ra;
            q[i + half] = rb;
        } else {
            int kh = h - n_heads;
            bf16* k = k_cache + (((size_t)block * n_kv + kh) * block_size + off) * hd;
            k[i] = f2bf(ra);
            k[i + half] = f2bf(rb);
        }
    }
    // Values, unrotated.
    for (int idx = threadIdx.x; idx < n_kv * hd; idx += blockDim.x) {
        int kh = idx / hd, d = idx % hd;
        int at = (n_heads + n_kv) * hd + idx;
        float v = row[at];
        if (bias) v += bias[at];
        v_cache[(((size_t)block * n_kv + kh) * block_size + off) * hd + d] = f2bf(v);
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
