// Row-wise and element-wise kernels of the Llama forward pass. One block per token row unless noted.

// x[row] = embedding[ids[row]] (bf16 table → f32 residual stream).
extern "C" __global__ void embed_rows(const bf16* table, const unsigned int* ids, float* x, int hidden) {
    const bf16* src = table + (size_t)ids[blockIdx.x] * hidden;
    float* dst = x + (size_t)blockIdx.x * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = bf2f(src[i]);
}

#define NORM_THREADS 512
#define NORM_UNROLL 8

// out[row] = bf16(w ⊙ x[row] / sqrt(mean(x[row]²) + eps)), reading row `rows[row]` of x when `rows` is set. One block
// of NORM_THREADS per row; the first NORM_THREADS · NORM_UNROLL elements of the row are loaded at once into
// registers (decode rows are latency-bound: one round trip to memory instead of one per strided step), longer rows
// stream the rest.
extern "C" __global__ void __launch_bounds__(NORM_THREADS)
    rms_norm(const float* x, const int* rows, const float* w, bf16* out, int dim, float eps) {
    __shared__ float scratch[32];
    const int src = rows ? rows[blockIdx.x] : blockIdx.x;
    const float* xr = x + (size_t)src * dim;
    const int span = NORM_THREADS * NORM_UNROLL;
    float v[NORM_UNROLL];
#pragma unroll
    for (int j = 0; j < NORM_UNROLL; j++) {
        int i = threadIdx.x + j * NORM_THREADS;
        v[j] = i < dim ? xr[i] : 0.0f;
    }
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < NORM_UNROLL; j++) ss += v[j] * v[j];
    for (int base = span; base < dim; base += span) {
#pragma unroll
        for (int j = 0; j < NORM_UNROLL; j++) {
            int i = base + threadIdx.x + j * NORM_THREADS;
            float t = i < dim ? xr[i] : 0.0f;
            ss += t * t;
        }
    }
    ss = block_sum(ss, scratch);
    const float inv = rsqrtf(ss / dim + eps);
    bf16* o = out + (size_t)blockIdx.x * dim;
#pragma unroll
    for (int j = 0; j < NORM_UNROLL; j++) {
        int i = threadIdx.x + j * NORM_THREADS;
        if (i < dim) o[i] = f2bf(w[i] * (v[j] * inv));
    }
    for (int base = span; base < dim; base += span) {
#pragma unroll
        for (int j = 0; j < NORM_UNROLL; j++) {
            int i = base + threadIdx.x + j * NORM_THREADS;
            if (i < dim) o[i] = f2bf(w[i] * (xr[i] * inv));
        }
    }
}

// SwiGLU over a fused [tokens, 2·inter] gate|up buffer: out[t, i] = silu(gate[t, i]) · up[t, i]. Grid (tokens,
// column slabs): each block takes blockDim.x columns of one row, so a single decode row still spreads over the GPU.
extern "C" __global__ void silu_mul(const bf16* gate_up, bf16* out, int inter) {
    const bf16* g = gate_up + (size_t)blockIdx.x * 2 * inter;
    bf16* o = out + (size_t)blockIdx.x * inter;
    for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < inter; i += gridDim.y * blockDim.x) {
        float gv = bf2f(g[i]);
        o[i] = f2bf(gv / (1.0f + __expf(-gv)) * bf2f(g[inter + i]));
    }
}

// Uniform random values in [-scale, scale) from a counter-based hash (splitmix64): the same seed gives the same
// weights on any device and launch shape. Grid-stride over n elements.
extern "C" __global__ void fill_uniform_bf16(bf16* out, unsigned long long n, unsigned long long seed, float scale) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        unsigned long long z = seed + (i + 1) * 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        float u = (float)(z >> 40) * (1.0f / 16777216.0f);
        out[i] = f2bf((2.0f * u - 1.0f) * scale);
    }
}

// KV transfer: copies whole blocks of one layer's keys and values from this device's pool into another pool (a
// peer's, mapped through CUDA IPC). Block (i, kv) copies pair i of `pairs`, keys for kv = 0 and values for kv = 1,
// in 16-byte words; a block of the pool is `block_words` words. Pairs travel in the launch parameters, so a copy
// needs no upload and no host synchronisation.
#define COPY_PAIRS 256
struct BlockPairs {
    int n;
    int src[COPY_PAIRS];
    int dst[COPY_PAIRS];
};

extern "C" __global__ void copy_kv_blocks(const uint4* src_k, const uint4* src_v, uint4* dst_k, uint4* dst_v,
                                          long long block_words, BlockPairs pairs) {
    if (blockIdx.x >= pairs.n) return;
    const uint4* s = (blockIdx.y ? src_v : src_k) + (long long)pairs.src[blockIdx.x] * block_words;
    uint4* d = (blockIdx.y ? dst_v : dst_k) + (long long)pairs.dst[blockIdx.x] * block_words;
    for (long long w = threadIdx.x; w < block_words; w += blockDim.x) d[w] = s[w];
}

// Mixture of experts: out[i] = src[idx[i]] for an expert's rows (bf16), one block per row.
extern "C" __global__ void gather_rows_bf16(const bf16* src, const int* idx, bf16* out, int cols) {
    const bf16* s = src + (size_t)idx[blockIdx.x] * cols;
    bf16* d = out + (size_t)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) d[c] = s[c];
}

// Mixture of experts: x[idx[i]] += weight[i] · src[i] for an expert's output rows (f32), one block per row. An
// expert's rows name distinct tokens, so no two blocks of a launch write one row.
extern "C" __global__ void scatter_add_rows(const float* src, const int* idx, const float* weight, float* x, int cols) {
    const float* s = src + (size_t)blockIdx.x * cols;
    float* d = x + (size_t)idx[blockIdx.x] * cols;
    const float w = weight[blockIdx.x];
    for (int c = threadIdx.x; c < cols; c += blockDim.x) d[c] += w * s[c];
}
