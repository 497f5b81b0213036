// An empty kernel: one work group that does nothing, for launch round-trip measurements.
@group(0) @binding(0) var<storage, read_write> unused: array<u32>;

@compute @workgroup_size(1, 1, 1)
fn main() {
    if (arrayLength(&unused) == 0xffffffffu) {
        unused[0] = 0u;
    }
}
