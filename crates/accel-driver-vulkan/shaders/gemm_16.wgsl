// 16-bit operands (`Gemm16`: f16 or bf16, as `p.ty` says), two to a 32-bit word. A and B are
// read as words and widened to f32: the sums are f32 throughout. C is read and written a
// half-word at a time with atomics, so the other half of each word, another invocation's
// element, is kept; each result is rounded once, to nearest with ties to even.

@group(0) @binding(0) var<storage, read> a: array<u32>;
@group(0) @binding(1) var<storage, read> b: array<u32>;
@group(0) @binding(2) var<storage, read_write> c: array<atomic<u32>>;

/// The 16 bits of element `at` of a word array's `word`.
fn half_of(word: u32, at: u32) -> u32 {
    return (word >> ((at & 1u) * 16u)) & 0xffffu;
}

/// A 16-bit value of the type as f32 (exact).
fn widen(bits: u32) -> f32 {
    if (p.ty == 0u) {
        return unpack2x16float(bits).x;
    }
    return bitcast<f32>(bits << 16u);
}

/// An f32 as the type's 16 bits, rounded to nearest, ties to even.
fn narrow(v: f32) -> u32 {
    if (p.ty == 0u) {
        return pack2x16float(vec2<f32>(v, 0.0)) & 0xffffu;
    }
    let u = bitcast<u32>(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        // NaN stays NaN (quiet), whatever its payload. Tested on the bits: WGSL lets
        // compilers assume no float is NaN, so `v != v` may be folded away.
        return (u >> 16u) | 0x40u;
    }
    return (u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u;
}

fn load_a(at: u32) -> f32 {
    return widen(half_of(a[at >> 1u], at));
}

fn load_b(at: u32) -> f32 {
    return widen(half_of(b[at >> 1u], at));
}

/// Element `at` of C becomes `x` + beta·C, rounded to the type.
fn put(at: u32, x: f32) {
    let word = at >> 1u;
    let shift = (at & 1u) * 16u;
    var y = x;
    if (p.beta != 0.0) {
        // Only this invocation writes this half; the other may change meanwhile.
        y += p.beta * widen(half_of(atomicLoad(&c[word]), at));
    }
    atomicAnd(&c[word], ~(0xffffu << shift));
    atomicOr(&c[word], narrow(y) << shift);
}
