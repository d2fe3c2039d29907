;; no-ptrace: a guardian policy written by hand, without the Rust SDK, to
;; show that the ABI is only bytes and numbers (policies/ABI.md).
;;
;;   rule 40  deny + kill   any ptrace attach (event kind 11)
;;   rule 41  alert         any exec with a preload variable (kind 9)
;;
;; It never decodes the postcard event: the kind is always byte 0.
;; Build: wat2wasm no-ptrace.wat (wabt) or wasm-tools parse no-ptrace.wat -o no-ptrace.wasm
(module
  (import "guardian" "log" (func $log (param i32 i32 i32)))

  ;; One page: the input buffer at 1024, the static rules and a message
  ;; below it.
  (memory (export "memory") 1)

  ;; StaticRules with nothing in it: protected = [] (length 0), then four
  ;; absent allowlists (Option::None = 0).
  (data (i32.const 0) "\00\00\00\00\00")
  (data (i32.const 16) "ptrace attach denied")

  (func (export "guardian_abi_version") (result i32) (i32.const 1))
  (func (export "guardian_buffer") (result i32) (i32.const 1024))
  (func (export "guardian_buffer_size") (result i32) (i32.const 8192))
  ;; (address 0 << 32) | length 5
  (func (export "guardian_static_rules") (result i64) (i64.const 5))

  (func (export "guardian_evaluate") (param $ptr i32) (param $len i32) (result i64)
    (local $kind i32)
    (if (i32.eqz (local.get $len))
      (then (return (i64.const 0xff))))        ;; cannot decode
    (local.set $kind (i32.load8_u (local.get $ptr)))
    (if (i32.eq (local.get $kind) (i32.const 11))
      (then
        (call $log (i32.const 2) (i32.const 16) (i32.const 20))
        ;; rule 40 << 32 | kill (1) << 8 | deny (2)
        (return (i64.const 0x0000002800000102))))
    (if (i32.eq (local.get $kind) (i32.const 9))
      (then
        ;; rule 41 << 32 | alert (1)
        (return (i64.const 0x0000002900000001))))
    (i64.const 0))
)
