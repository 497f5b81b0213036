// f32 operands: what the kernels read and write through `load_a`, `load_b` and `store`.

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;

fn load_a(at: u32) -> f32 {
    return a[at];
}

fn load_b(at: u32) -> f32 {
    return b[at];
}

/// Four elements of C from `col0` on in `row`: alpha·v + beta·C, past the matrix's edge nothing.
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
