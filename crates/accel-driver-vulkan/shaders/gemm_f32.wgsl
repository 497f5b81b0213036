// f32 operands: what the kernels read through `load_a` and `load_b`, and `store` writes
// through `put`.

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;

fn load_a(at: u32) -> f32 {
    return a[at];
}

fn load_b(at: u32) -> f32 {
    return b[at];
}

/// Element `at` of C becomes `x` + beta·C.
fn put(at: u32, x: f32) {
    if (p.beta == 0.0) {
        c[at] = x;
    } else {
        c[at] = x + p.beta * c[at];
    }
}
