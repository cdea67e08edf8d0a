//! A Proxy-Wasm plugin for the WasmPlugin tests, written in the WebAssembly
//! text format and assembled here (no Wasm toolchain needed): on each
//! request and each response it adds the header [`PLUGIN_HEADER`] with the
//! plugin's configuration (what a WasmPlugin's `pluginConfig` becomes,
//! JSON text) as its value. It speaks Proxy-Wasm ABI 0.2.1, the one
//! Envoy's V8 runtime runs.

/// The header the plugin adds to requests and responses.
pub const PLUGIN_HEADER: &str = "x-wasm-config";

/// The plugin's text: host calls `proxy_get_buffer_bytes` (the plugin
/// configuration, buffer type 7, read once in `proxy_on_configure`) and
/// `proxy_add_header_map_value` (map 0: request headers, 2: response
/// headers); memory handed to the host by a bump allocator
/// (`proxy_on_memory_allocate`), never freed (the configuration is read
/// once per VM).
const PLUGIN_WAT: &str = r#"(module
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes"
    (func $buffer (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  (global $config (mut i32) (i32.const 0))
  (global $config_len (mut i32) (i32.const 0))
  (data (i32.const 16) "x-wasm-config")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (if (i32.gt_u (local.get $size) (i32.const 0))
      (then
        (drop (call $buffer (i32.const 7) (i32.const 0) (local.get $size)
          (i32.const 0) (i32.const 4)))
        (global.set $config (i32.load (i32.const 0)))
        (global.set $config_len (i32.load (i32.const 4)))))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $add_header (i32.const 0) (i32.const 16) (i32.const 13)
      (global.get $config) (global.get $config_len)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add_header (i32.const 2) (i32.const 16) (i32.const 13)
      (global.get $config) (global.get $config_len)))
    (i32.const 0))
)"#;

/// The plugin's binary module.
pub fn header_plugin() -> Vec<u8> {
    wat::parse_str(PLUGIN_WAT).expect("the plugin's text assembles")
}

/// The lowercase hex SHA-256 of `bytes` (a WasmPlugin's `sha256`).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
