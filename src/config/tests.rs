//! The configuration's layering and checks.

use super::*;

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gantry.toml")
}

#[test]
fn shipped_config_equals_embedded_defaults() {
    let loaded = Config::load(&shipped(), true, &Overrides::default()).unwrap();
    assert_eq!(loaded, Config::default());
}

#[test]
fn bad_values_name_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[server]\nworkers = \"many\"\n").unwrap();
    let err = Config::load(&file, true, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.workers") && err.contains("bad.toml"),
        "{err}"
    );

    std::fs::write(&file, "[server]\nbind = \"nowhere\"\n").unwrap();
    let err = Config::load(&file, true, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.bind") && err.contains("bad.toml"),
        "{err}"
    );

    std::fs::write(&file, "[server]\nreceive_buffer_kb = 100000\n").unwrap();
    let err = Config::load(&file, true, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.receive_buffer_kb"), "{err}");

    std::fs::write(&file, "[serverr]\n").unwrap();
    let err = Config::load(&file, true, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("serverr"), "{err}");
}

#[test]
fn missing_explicit_file_is_an_error() {
    let err = Config::load(
        Path::new("/nonexistent/g.toml"),
        true,
        &Overrides::default(),
    );
    assert!(err.unwrap_err().to_string().contains("not found"));
}

#[test]
fn a_missing_default_file_leaves_the_embedded_defaults() {
    let config = Config::load(
        Path::new("/nonexistent/gantry.toml"),
        false,
        &Overrides::default(),
    )
    .expect("defaults");
    assert_eq!(config, Config::default());
}

#[test]
fn flags_win_over_the_file() {
    let overrides = Overrides {
        bind: Some("127.0.0.1:9999".into()),
        grpc_bind: Some(String::new()),
        models_dir: Some("elsewhere".into()),
        log_format: Some(LogFormat::Json),
    };
    let config = Config::load(&shipped(), true, &overrides).unwrap();
    assert_eq!(config.server.bind, "127.0.0.1:9999");
    assert_eq!(config.server.grpc_bind, "");
    assert_eq!(config.models.dir, PathBuf::from("elsewhere"));
    assert_eq!(config.log.format, LogFormat::Json);
}
