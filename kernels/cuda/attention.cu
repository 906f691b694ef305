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

#define ATTN_WARPS 4
#define MAX_HD_PER_LANE 8

// Causal attention for one query token and one query head per block (ATTN_WARPS warps). The token at absolute
// position pos[t] attends to positions 0..=pos[t] of its sequence, whose blocks are block_tables[table_off[t]..].
// Warps take keys round-robin, each with an online softmax over its keys; the warps' partial results merge at the
// end. q is f32 [T, n_heads·hd]; out is bf16 [T, n_heads·hd]. head_dim must be a multiple of 32, at most 256.
extern "C" __global__ void paged_attention(const float* q, const bf16* k_cache, const bf16* v_cache,
                                           const int* block_tables, const int* table_off, const int* pos,
                                           bf16* out, int n_heads, int n_kv, int hd, int block_size, float scale) {
    __shared__ float s_m[ATTN_WARPS], s_l[ATTN_WARPS];
    __shared__ float s_acc[ATTN_WARPS][32 * MAX_HD_PER_LANE];
    int t = blockIdx.x, h = blockIdx.y;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int per_lane = hd / 32;
    int kh = h / (n_heads / n_kv);
    const float* qh = q + ((size_t)t * n_heads + h) * hd;
    float qr[MAX_HD_PER_LANE];
    for (int c = 0; c < per_lane; c++) qr[c] = qh[c * 32 + lane] * scale;
    float m = NEG_INF, l = 0.0f;
    float acc[MAX_HD_PER_LANE];
    for (int c = 0; c < MAX_HD_PER_LANE; c++) acc[c] = 0.0f;
    const int* table = block_tables + table_off[t];
    int n_keys = pos[t] + 1;
    for (int j = warp; j < n_keys; j += ATTN_WARPS) {
        int block = table[j / block_size], off = j % block_size;
        size_t at = (((size_t)block * n_kv + kh) * block_size + off) * hd;
        float dot = 0.0f;
        for (int c = 0; c < per_lane; c++) dot += qr[c] * bf2f(k_cache[at + c * 32 + lane]);
        dot = warp_sum(dot);
        float m_new = fmaxf(m, dot);
        float correction = __expf(m - m_new);
        float p = __expf(dot - m_new);
        l = l * correction + p;
        for (int c = 0; c < per_lane; c++) acc[c] = acc[c] * correction + p * bf2f(v_cache[at + c * 32 + lane]);
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
        for (int c = 0; c < per_lane; c++) oh[c * 32 + lane] = f2bf(o[c] / gl);
    }
}
