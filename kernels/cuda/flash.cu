// Flash attention for prefill chunks on the tensor cores: mma.sync m16n8k16 with bf16 inputs and f32 accumulation.
//
// A block takes one query head and a tile of up to FA_M consecutive query rows of one sequence (the same tile
// records as `prefill_attention`: first row, rows, block-table offset, position of the first row) and streams that
// sequence's keys and values, FA_N positions at a time, through shared memory from the paged cache, with an online
// softmax in f32. Queries attend causally to every earlier position of their sequence, so a chunk that follows a
// cached prefix reads the prefix's KV too. Four warps each own 16 query rows: S = Q·Kᵀ and O += P·V are tensor-core
// MMAs whose accumulator fragments stay in registers (P reuses S's fragments as the A operand, rounded to bf16).
// Q is split into bf16 high and low parts, S = Qhi·Kᵀ + Qlo·Kᵀ (two MMAs, f32 accumulation), so scores carry ~2⁻¹⁶
// relative error instead of 2⁻⁸: with bf16 Q the default model's greedy tokens left transformers' at a step whose
// top-2 logit margin is 0.064 (golden test, chat_system), and the kernel test needed a 4× looser bound. P stays
// one bf16 MMA: splitting it too measured no closer to the golden tokens (it then matches the f32 CUDA-core kernel,
// which flips a 0.0016 margin at step 9 of chat_system). The Q split costs ~0.5% of 8B prefill on an H200.
// Tiles run heaviest first (the last tiles of a causal prompt read the most keys).

#define FA_M 64
#define FA_N 64
#define FA_THREADS 128

// Two floats to packed bf16 (round to nearest even): `lo` in the low half, the lower column of a fragment.
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    unsigned d;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}

// x and y (`x` in the low half) as packed bf16 `hi` plus packed bf16 `lo` of what rounding left: hi + lo carries
// ~16 bits of mantissa, so two bf16 MMAs with f32 accumulation give products with ~2⁻¹⁶ relative error, not 2⁻⁸.
__device__ __forceinline__ void split_bf16(float x, float y, unsigned& hi, unsigned& lo) {
    hi = pack_bf16(x, y);
    lo = pack_bf16(x - __uint_as_float(hi << 16), y - __uint_as_float(hi & 0xffff0000u));
}

// c += a · b for one 16×8 f32 tile; a is the 16×16 bf16 A fragment, (b0, b1) the 16×8 B fragment.
__device__ __forceinline__ void mma_bf16(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four transposed 8×8 bf16 matrices from shared memory; this lane gives the address of one row.
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned* r, const bf16* row) {
    unsigned addr;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(addr) : "l"(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

template <int HD>
__device__ __forceinline__ void flash_prefill(const float* q, const bf16* k_cache, const bf16* v_cache,
                                              const int* block_tables, const int* tiles, int n_tiles, bf16* out,
                                              int n_heads, int n_kv, int block_size, float scale) {
    // 16 bytes of padding per row: the fragment loads of 8 rows × 4 lanes then hit 32 different banks.
    constexpr int STRIDE = HD + 8;
    __shared__ __align__(16) bf16 s_k[FA_N * STRIDE];
    __shared__ __align__(16) bf16 s_v[FA_N * STRIDE];

    const int* tile = tiles + 4 * (n_tiles - 1 - blockIdx.x);
    const int row0 = tile[0], n_rows = tile[1], pos0 = tile[3];
    const int* table = block_tables + tile[2];
    const int h = blockIdx.y, kh = h / (n_heads / n_kv);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, tig = lane & 3;
    const int q_width = n_heads * HD;

    // Q (f32) → bf16 high parts staged through s_k (and the low parts through s_v), then into this warp's A
    // fragments for the whole pass.
    for (int i = tid; i < FA_M * HD / 4; i += FA_THREADS) {
        int r = i / (HD / 4), c = (i % (HD / 4)) * 4;
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (r < n_rows) v = *(const float4*)(q + (size_t)(row0 + r) * q_width + h * HD + c);
        unsigned* dst = (unsigned*)&s_k[r * STRIDE + c];
        unsigned* dst_lo = (unsigned*)&s_v[r * STRIDE + c];
        split_bf16(v.x, v.y, dst[0], dst_lo[0]);
        split_bf16(v.z, v.w, dst[1], dst_lo[1]);
    }
    __syncthreads();
    const int m0 = warp * 16;
    unsigned qa[HD / 16][4], qa_lo[HD / 16][4];
#pragma unroll
    for (int ks = 0; ks < HD / 16; ks++) {
        const int at = (m0 + g) * STRIDE + ks * 16 + 2 * tig;
        const int offs[4] = {at, at + 8 * STRIDE, at + 8, at + 8 * STRIDE + 8};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            qa[ks][j] = *(const unsigned*)(s_k + offs[j]);
            qa_lo[ks][j] = *(const unsigned*)(s_v + offs[j]);
        }
    }

    float o[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    // Running max (in log2 units) and this lane's part of the running sum, for rows g and g + 8.
    float m_run[2] = {NEG_INF, NEG_INF}, l_run[2] = {0.0f, 0.0f};
    const float scale_log2 = scale * 1.4426950408889634f;
    const int last_pos = pos0 + n_rows - 1;
    const bool warp_active = m0 < n_rows;
    const int warp_first = pos0 + m0, warp_last = min(pos0 + m0 + 15, last_pos);
    const int qp0 = pos0 + m0 + g, qp1 = qp0 + 8;

    for (int k0 = 0; k0 <= last_pos; k0 += FA_N) {
        // Keys and values of positions k0 .. k0 + FA_N (zeros past the tile's last row). A cp.async pipeline that
        // overlaps these loads with the MMAs measured no faster on an H100 (33.1k vs 33.6k tokens/s for the 8B
        // shape's 2,048-token prefill), so the loads stay plain.
        __syncthreads();
        for (int i = tid; i < FA_N * HD / 8; i += FA_THREADS) {
            int r = i / (HD / 8), c = (i % (HD / 8)) * 8, kp = k0 + r;
            uint4 kv = make_uint4(0u, 0u, 0u, 0u), vv = make_uint4(0u, 0u, 0u, 0u);
            if (kp <= last_pos) {
                size_t at = (((size_t)table[kp / block_size] * n_kv + kh) * block_size + kp % block_size) * HD + c;
                kv = *(const uint4*)(k_cache + at);
                vv = *(const uint4*)(v_cache + at);
            }
            *(uint4*)&s_k[r * STRIDE + c] = kv;
            *(uint4*)&s_v[r * STRIDE + c] = vv;
        }
        __syncthreads();
        // Warp-uniform: rows past the tile, or keys all after this warp's last row, add nothing.
        const bool active = warp_active && k0 <= warp_last;

        float s[FA_N / 8][4];
#pragma unroll
        for (int nt = 0; nt < FA_N / 8; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
        if (active) {
#pragma unroll
            for (int ks = 0; ks < HD / 16; ks++) {
#pragma unroll
                for (int nt = 0; nt < FA_N / 8; nt++) {
                    const bf16* kb = s_k + (nt * 8 + g) * STRIDE + ks * 16 + 2 * tig;
                    const unsigned b0 = *(const unsigned*)kb, b1 = *(const unsigned*)(kb + 8);
                    mma_bf16(s[nt], qa[ks], b0, b1);
                    mma_bf16(s[nt], qa_lo[ks], b0, b1);
                }
            }
        }
        unsigned pa[FA_N / 16][4];
        if (active) {
            const bool masked = k0 + FA_N - 1 > warp_first;
            float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
            for (int nt = 0; nt < FA_N / 8; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int kp = k0 + nt * 8 + 2 * tig + (e & 1);
                    float v = s[nt][e] * scale_log2;
                    if (masked && kp > (e < 2 ? qp0 : qp1)) v = NEG_INF;
                    s[nt][e] = v;
                    if (e < 2) mx0 = fmaxf(mx0, v);
                    else mx1 = fmaxf(mx1, v);
                }
            }
#pragma unroll
            for (int off = 1; off < 4; off <<= 1) {
                mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
                mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
            }
            const float new0 = fmaxf(m_run[0], mx0), new1 = fmaxf(m_run[1], mx1);
            // A row that has seen only masked keys keeps a max of -inf; subtract 0 then so exp2 gives 0, not NaN.
            const float base0 = new0 == NEG_INF ? 0.0f : new0, base1 = new1 == NEG_INF ? 0.0f : new1;
            const float corr0 = exp2f(m_run[0] - base0), corr1 = exp2f(m_run[1] - base1);
            m_run[0] = new0;
            m_run[1] = new1;
            l_run[0] *= corr0;
            l_run[1] *= corr1;
#pragma unroll
            for (int i = 0; i < HD / 8; i++) {
                o[i][0] *= corr0;
                o[i][1] *= corr0;
                o[i][2] *= corr1;
                o[i][3] *= corr1;
            }
#pragma unroll
            for (int nt = 0; nt < FA_N / 8; nt++) {
                s[nt][0] = exp2f(s[nt][0] - base0);
                s[nt][1] = exp2f(s[nt][1] - base0);
                s[nt][2] = exp2f(s[nt][2] - base1);
                s[nt][3] = exp2f(s[nt][3] - base1);
                l_run[0] += s[nt][0] + s[nt][1];
                l_run[1] += s[nt][2] + s[nt][3];
            }
#pragma unroll
            for (int kk = 0; kk < FA_N / 16; kk++) {
                pa[kk][0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
                pa[kk][1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
                pa[kk][2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                pa[kk][3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
            }
        }
        if (active) {
#pragma unroll
            for (int kk = 0; kk < FA_N / 16; kk++) {
#pragma unroll
                for (int np = 0; np < HD / 16; np++) {
                    unsigned b[4];
                    ldmatrix_x4_trans(b, s_v + (kk * 16 + (lane & 15)) * STRIDE + np * 16 + (lane >> 4) * 8);
                    mma_bf16(o[2 * np], pa[kk], b[0], b[1]);
                    mma_bf16(o[2 * np + 1], pa[kk], b[2], b[3]);
                }
            }
        }
    }
    if (!warp_active) return;
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        l_run[0] += __shfl_xor_sync(0xffffffffu, l_run[0], off);
        l_run[1] += __shfl_xor_sync(0xffffffffu, l_run[1], off);
    }
    // Every real row sees key 0, so its sum is positive; rows past the tile are not written.
    const float inv0 = l_run[0] > 0.0f ? 1.0f / l_run[0] : 0.0f, inv1 = l_run[1] > 0.0f ? 1.0f / l_run[1] : 0.0f;
    const int r0 = m0 + g, r1 = r0 + 8;
#pragma unroll
    for (int nt = 0; nt < HD / 8; nt++) {
        int col = h * HD + nt * 8 + 2 * tig;
        if (r0 < n_rows)
            *(unsigned*)(out + (size_t)(row0 + r0) * q_width + col) = pack_bf16(o[nt][0] * inv0, o[nt][1] * inv0);
        if (r1 < n_rows)
            *(unsigned*)(out + (size_t)(row0 + r1) * q_width + col) = pack_bf16(o[nt][2] * inv1, o[nt][3] * inv1);
    }
}

#define FLASH_ARGS                                                                                                  \
    const float *q, const bf16 *k_cache, const bf16 *v_cache, const int *block_tables, const int *tiles, int n_tiles, \
        bf16 *out, int n_heads, int n_kv, int block_size, float scale
#define FLASH_PASS q, k_cache, v_cache, block_tables, tiles, n_tiles, out, n_heads, n_kv, block_size, scale

// Grid (tiles, query heads), FA_THREADS threads. q f32 [T, n_heads·HD]; out bf16 [T, n_heads·HD].
extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_prefill_hd64(FLASH_ARGS) {
    flash_prefill<64>(FLASH_PASS);
}
extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_prefill_hd128(FLASH_ARGS) {
    flash_prefill<128>(FLASH_PASS);
}
