// The GEMM shaders' parameters, as push constants, and the store of C every kernel and
// operand type shares (the build script puts this file first, then the operands' file,
// `gemm_f32.wgsl` or `gemm_16.wgsl`, then the kernel, `gemm.wgsl` or `gemm_tiled.wgsl`).
// Dimensions and strides in elements; offsets in elements from each binding's start (bindings
// start where the device's alignment allows; the remainder comes here).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    a_off: u32,
    b_off: u32,
    c_off: u32,
    alpha: f32,
    beta: f32,
    /// Element type of the 16-bit operands: 0 f16, 1 bf16 (the f32 shaders ignore it).
    ty: u32,
}

var<push_constant> p: Params;

/// Four elements of C from `col0` on in `row`: alpha·v + beta·C (the operands' `put`), past
/// the matrix's edge nothing.
fn store(row: u32, col0: u32, v: vec4<f32>) {
    if (row >= p.m) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let col = col0 + j;
        if (col < p.n) {
            put(p.c_off + row * p.ldc + col, p.alpha * v[j]);
        }
    }
}
