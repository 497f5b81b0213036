// C = alpha·A·B + beta·C over row-major matrices with row strides: a work group of 256
// invocations computes a 128×128 tile of C. It walks K in steps of 8: the group loads the
// 128×8 slice of A and the 8×128 slice of B into workgroup memory once (each element of them
// is then read by 16 invocations from there instead of from device memory), and each
// invocation accumulates an 8×8 block of C in registers from 8 values of A and 8 of B per
// step (64 multiply-adds for 4 vector loads). Devices whose work groups cannot hold 256
// invocations in a row take `gemm.wgsl`. Parameters: `gemm_params.wgsl`; the operands
// (`load_a`, `load_b`, `put`): `gemm_f32.wgsl` or `gemm_16.wgsl`.

/// Rows of C a work group computes.
const BM: u32 = 128u;
/// Columns of C a work group computes.
const BN: u32 = 128u;
/// Step along K.
const BK: u32 = 8u;

/// The slice of A, transposed: row `kk` holds A[row0 .. row0 + 128][k0 + kk], 4 to a vector.
var<workgroup> tile_a: array<vec4<f32>, 256>;
/// The slice of B: row `kk` holds B[k0 + kk][col0 .. col0 + 128], 4 to a vector.
var<workgroup> tile_b: array<vec4<f32>, 256>;

@compute @workgroup_size(256, 1, 1)
fn gemm(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) group: vec3<u32>) {
    let row0 = group.y * BM;
    let col0 = group.x * BN;
    // This invocation's 8×8 block within the tile, in vectors of 4.
    let tr = (t / 16u) * 2u;
    let tc = (t % 16u) * 2u;
    // acc[2i] and acc[2i + 1]: row i of the block, columns 0..4 and 4..8.
    var acc: array<vec4<f32>, 16>;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // 1024 elements of each slice, 4 per invocation; outside the matrices, zeros.
        for (var i = 0u; i < 4u; i++) {
            let e = t + i * 256u;
            let ar = e / BK;
            let ak = e % BK;
            var av = 0.0;
            if (row0 + ar < p.m && k0 + ak < p.k) {
                av = load_a(p.a_off + (row0 + ar) * p.lda + k0 + ak);
            }
            tile_a[(ak * BM + ar) / 4u][ar % 4u] = av;
            let bk = e / BN;
            let bc = e % BN;
            var bv = 0.0;
            if (k0 + bk < p.k && col0 + bc < p.n) {
                bv = load_b(p.b_off + (k0 + bk) * p.ldb + col0 + bc);
            }
            tile_b[(bk * BN + bc) / 4u][bc % 4u] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a0 = tile_a[kk * (BM / 4u) + tr];
            let a1 = tile_a[kk * (BM / 4u) + tr + 1u];
            let b0 = tile_b[kk * (BN / 4u) + tc];
            let b1 = tile_b[kk * (BN / 4u) + tc + 1u];
            acc[0] += a0.x * b0;
            acc[1] += a0.x * b1;
            acc[2] += a0.y * b0;
            acc[3] += a0.y * b1;
            acc[4] += a0.z * b0;
            acc[5] += a0.z * b1;
            acc[6] += a0.w * b0;
            acc[7] += a0.w * b1;
            acc[8] += a1.x * b0;
            acc[9] += a1.x * b1;
            acc[10] += a1.y * b0;
            acc[11] += a1.y * b1;
            acc[12] += a1.z * b0;
            acc[13] += a1.z * b1;
            acc[14] += a1.w * b0;
            acc[15] += a1.w * b1;
        }
        workgroupBarrier();
    }
    // Constant indices only, so compilers keep `acc` in registers (an index they cannot
    // resolve would move the whole array to memory).
    let row = row0 + tr * 4u;
    let col = col0 + tc * 4u;
    store(row + 0u, col, acc[0]);
    store(row + 0u, col + 4u, acc[1]);
    store(row + 1u, col, acc[2]);
    store(row + 1u, col + 4u, acc[3]);
    store(row + 2u, col, acc[4]);
    store(row + 2u, col + 4u, acc[5]);
    store(row + 3u, col, acc[6]);
    store(row + 3u, col + 4u, acc[7]);
    store(row + 4u, col, acc[8]);
    store(row + 4u, col + 4u, acc[9]);
    store(row + 5u, col, acc[10]);
    store(row + 5u, col + 4u, acc[11]);
    store(row + 6u, col, acc[12]);
    store(row + 6u, col + 4u, acc[13]);
    store(row + 7u, col, acc[14]);
    store(row + 7u, col + 4u, acc[15]);
}
