//! Prints a GGUF file's metadata (arrays summarised) and tensor directory.
//! Usage: cargo run -p tunegate-model --example gguf_dump -- [PATH]
use tunegate_model::gguf::{Array, Value};
use tunegate_model::{paths, GgufFile};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = match std::env::args().nth(1) {
        Some(p) => p.into(),
        None => paths::resolve_default_model()?,
    };
    let t = std::time::Instant::now();
    let g = GgufFile::open(&path)?;
    println!(
        "# {} (GGUF v{}, read in {:?})",
        path.display(),
        g.version,
        t.elapsed()
    );
    for (k, v) in &g.metadata {
        match v {
            Value::Array(a) => {
                let head = match a {
                    Array::String(s) => format!("{:?}", &s[..s.len().min(5)]),
                    Array::F32(s) => format!("{:?}", &s[..s.len().min(5)]),
                    Array::I32(s) => format!("{:?}", &s[..s.len().min(5)]),
                    _ => String::new(),
                };
                println!("{k}: {} x{} {head}", a.type_name(), a.len())
            }
            Value::String(s) if s.len() > 200 => println!("{k}: string ({} bytes)", s.len()),
            v => println!("{k}: {v:?}"),
        }
    }
    println!(
        "# {} tensors, data at {} (alignment {})",
        g.tensors.len(),
        g.data_offset,
        g.alignment
    );
    for t in &g.tensors {
        println!("{} {:?} {} @{}", t.name, t.dims, t.ggml_type, t.offset);
    }
    Ok(())
}
