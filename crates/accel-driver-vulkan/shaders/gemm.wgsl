// C = alpha·A·B + beta·C over row-major f32 matrices with row strides, in 16×16 tiles staged
// through workgroup memory. Offsets are in elements from each binding's start (bindings start
// at an offset the device's alignment allows; the remainder comes here).

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

const TILE: u32 = 16u;

var<workgroup> ta: array<array<f32, 16>, 16>;
var<workgroup> tb: array<array<f32, 16>, 16>;

@compute @workgroup_size(16, 16, 1)
fn gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wg.y * TILE + lid.y;
    let col = wg.x * TILE + lid.x;
    var acc = 0.0;
    let tiles = (p.k + TILE - 1u) / TILE;
    for (var t = 0u; t < tiles; t++) {
        let ac = t * TILE + lid.x;
        let br = t * TILE + lid.y;
        var av = 0.0;
        if (row < p.m && ac < p.k) {
            av = a[p.a_off + row * p.lda + ac];
        }
        var bv = 0.0;
        if (br < p.k && col < p.n) {
            bv = b[p.b_off + br * p.ldb + col];
        }
        ta[lid.y][lid.x] = av;
        tb[lid.y][lid.x] = bv;
        workgroupBarrier();
        for (var i = 0u; i < TILE; i++) {
            acc += ta[lid.y][i] * tb[i][lid.x];
        }
        workgroupBarrier();
    }
    if (row < p.m && col < p.n) {
        let at = p.c_off + row * p.ldc + col;
        if (p.beta == 0.0) {
            c[at] = p.alpha * acc;
        } else {
            c[at] = p.alpha * acc + p.beta * c[at];
        }
    }
}
