//! Compiles the driver's compute shaders (WGSL in `shaders/`) to SPIR-V with naga: pure
//! Rust, no external compiler. The SPIR-V lands in `OUT_DIR` and is embedded with
//! `include_bytes!`.

use std::path::PathBuf;

/// The shaders built, by name, each from files in `shaders/` put one after the other (WGSL
/// has no includes): each GEMM kernel with each kind of operands.
const SHADERS: &[(&str, &[&str])] = &[
    ("gemm", &["gemm_params", "gemm_f32", "gemm"]),
    ("gemm_tiled", &["gemm_params", "gemm_f32", "gemm_tiled"]),
    ("gemm16", &["gemm_params", "gemm_16", "gemm"]),
    ("gemm16_tiled", &["gemm_params", "gemm_16", "gemm_tiled"]),
    ("null", &["null"]),
];

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for (name, files) in SHADERS {
        let src = format!("{name} (shaders/{}.wgsl)", files.join(".wgsl + "));
        let mut text = String::new();
        for file in *files {
            let path = format!("shaders/{file}.wgsl");
            println!("cargo:rerun-if-changed={path}");
            text += &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        }
        let module = naga::front::wgsl::parse_str(&text).unwrap_or_else(|e| panic!("{}", e.emit_to_string(&text)));
        let info =
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::PUSH_CONSTANT)
                .validate(&module)
                .unwrap_or_else(|e| panic!("{src}: {}", e.emit_to_string(&text)));
        // The driver's own shaders: every loop is bounded by its parameters and workgroup
        // memory is written before it is read, so neither naga's loop-bounding counters (an
        // extra counter in every loop, the GEMM's inner ones included) nor its zeroing of
        // workgroup memory (a prologue and a barrier per work group) is needed.
        let options = naga::back::spv::Options {
            lang_version: (1, 3),
            flags: naga::back::spv::WriterFlags::empty(),
            force_loop_bounding: false,
            zero_initialize_workgroup_memory: naga::back::spv::ZeroInitializeWorkgroupMemoryMode::None,
            ..Default::default()
        };
        let words = naga::back::spv::write_vec(&module, &info, &options, None).unwrap_or_else(|e| panic!("{src}: {e}"));
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        std::fs::write(out.join(format!("{name}.spv")), bytes).expect("writing SPIR-V");
    }
}
