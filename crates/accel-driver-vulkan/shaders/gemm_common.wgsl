// What both GEMM shaders share (the build script puts it before each): the parameters, as
// push constants, the three matrices' bindings, and the store of four elements of C
// (alpha·v + beta·C, past the matrix's edge nothing).

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
}

var<push_constant> p: Params;

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;

fn store(row: u32, col0: u32, v: vec4<f32>) {
    if (row >= p.m) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let col = col0 + j;
        if (col < p.n) {
            let at = p.c_off + row * p.ldc + col;
            if (p.beta == 0.0) {
                c[at] = p.alpha * v[j];
            } else {
                c[at] = p.alpha * v[j] + p.beta * c[at];
            }
        }
    }
}
