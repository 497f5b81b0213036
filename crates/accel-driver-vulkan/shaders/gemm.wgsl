// C = alpha·A·B + beta·C over row-major matrices with row strides, for devices whose work
// groups cannot hold the 256 invocations of `gemm_tiled.wgsl`. Each invocation computes a 4×4
// block of C in registers, reading A and B straight from memory (the caches serve the reuse,
// no workgroup memory). A work group of 8×8 invocations covers a 32×32 tile of C. Parameters:
// `gemm_params.wgsl`; the operands (`load_a`, `load_b`, `put`): `gemm_f32.wgsl` or
// `gemm_16.wgsl`.

@compute @workgroup_size(8, 8, 1)
fn gemm(@builtin(global_invocation_id) id: vec3<u32>) {
    let row0 = id.y * 4u;
    let col0 = id.x * 4u;
    if (row0 >= p.m || col0 >= p.n) {
        return;
    }
    // Rows and columns past the edge repeat the last one (in bounds) and are not stored.
    // Everything stays in named registers: indexed local arrays spill on some compilers.
    let r0 = p.a_off + min(row0, p.m - 1u) * p.lda;
    let r1 = p.a_off + min(row0 + 1u, p.m - 1u) * p.lda;
    let r2 = p.a_off + min(row0 + 2u, p.m - 1u) * p.lda;
    let r3 = p.a_off + min(row0 + 3u, p.m - 1u) * p.lda;
    let c0 = min(col0, p.n - 1u);
    let c1 = min(col0 + 1u, p.n - 1u);
    let c2 = min(col0 + 2u, p.n - 1u);
    let c3 = min(col0 + 3u, p.n - 1u);
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < p.k; kk++) {
        let bo = p.b_off + kk * p.ldb;
        let bv = vec4<f32>(load_b(bo + c0), load_b(bo + c1), load_b(bo + c2), load_b(bo + c3));
        acc0 += load_a(r0 + kk) * bv;
        acc1 += load_a(r1 + kk) * bv;
        acc2 += load_a(r2 + kk) * bv;
        acc3 += load_a(r3 + kk) * bv;
    }
    store(row0, col0, acc0);
    store(row0 + 1u, col0, acc1);
    store(row0 + 2u, col0, acc2);
    store(row0 + 3u, col0, acc3);
}
