;; opa-allowlist: a module of OPA's Wasm ABI 1.3 written by hand, standing
;; in for what `opa build -t wasm` makes of ../rego/allowlist.rego, so that guardian's Rego host can be tested without the opa tool.
;; It follows the ABI of OPA's docs/docs/wasm.md: it imports env.memory,
;; opa_abort, opa_println and opa_builtin2; it exports the ABI version
;; globals, opa_malloc, opa_free, opa_json_parse, opa_value_parse,
;; opa_json_dump, opa_value_dump, opa_heap_ptr_get/set, the evaluation
;; context calls and eval, opa_eval (1.2), the 1.3 heap stash calls,
;; entrypoints and builtins.
;;
;; Its values are simpler than OPA's (a value is its JSON text: a 4-byte
;; length, the text, a NUL), which the host cannot tell: the host only
;; ever hands values back to the module or has them dumped as JSON.
;;
;; The rule (../rego/allowlist.rego, with ../rego/data.json):
;;
;;   guardian/allow    input.exe is in data.allowed
;;   guardian/verdict  "allow" if allowed; else deny + kill, rule 7, when
;;                     startswith(input.exe, "/tmp/") (a host builtin);
;;                     else alert, rule 3
;;   guardian/debug    "debug" (prints a line; never chosen by guardian)
;;
;; Entrypoint ids 3, 4 and 5 (in no map here; tests point a name at them)
;; loop forever, grow memory past any limit, and return malformed JSON; 6
;; answers "allow" without reading anything (the benchmark's measure of
;; the host's own part); an unknown id calls opa_abort, as OPA's eval does.
;;
;; Build: wasm-tools parse opa-allowlist.wat -o opa-allowlist.wasm
(module
  (import "env" "memory" (memory 2))
  (import "env" "opa_abort" (func $opa_abort (param i32)))
  (import "env" "opa_println" (func $opa_println (param i32)))
  (import "env" "opa_builtin2" (func $opa_builtin2 (param i32 i32 i32 i32) (result i32)))
  (export "memory" (memory 0))

  (global (export "opa_wasm_abi_version") i32 (i32.const 1))
  (global (export "opa_wasm_abi_minor_version") i32 (i32.const 3))
  ;; The heap grows up from 4096; data segments lie below.
  (global $heap (mut i32) (i32.const 4096))
  (global $exe_ptr (mut i32) (i32.const 0))
  (global $exe_len (mut i32) (i32.const 0))

  ;; NUL-terminated texts, 64 or 256 bytes apart.
  (data (i32.const 1024) "{\"startswith\":0}\00")
  (data (i32.const 1280) "{\"guardian/allow\":0,\"guardian/verdict\":1,\"guardian/debug\":2}\00")
  (data (i32.const 1536) "\"exe\":\"")
  (data (i32.const 1552) "\"allowed\":")
  (data (i32.const 1568) "\"/tmp/\"")
  (data (i32.const 1600) "[{\"result\":true}]\00")
  (data (i32.const 1664) "[{\"result\":false}]\00")
  (data (i32.const 1728) "[{\"result\":\"allow\"}]\00")
  (data (i32.const 1792) "[{\"result\":{\"decision\":\"alert\",\"rule\":3}}]\00")
  (data (i32.const 1856) "[{\"result\":{\"decision\":\"deny\",\"rule\":7,\"actions\":[\"kill\"]}}]\00")
  (data (i32.const 1984) "[{\"result\":\"debug\"}]\00")
  (data (i32.const 2048) "[{\"result\":\00")
  (data (i32.const 2112) "invalid entrypoint id\00")
  (data (i32.const 2176) "true")
  (data (i32.const 2240) "debug entrypoint evaluated\00")

  ;; --- the heap: a bump allocator, reset by opa_heap_ptr_set ---------------

  (func $malloc (export "opa_malloc") (param $size i32) (result i32)
    (local $p i32) (local $end i32) (local $have i32)
    (local.set $p (global.get $heap))
    (local.set $end
      (i32.and (i32.add (i32.add (local.get $p) (local.get $size)) (i32.const 7))
               (i32.const -8)))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (drop (memory.grow
          (i32.add (i32.shr_u (i32.sub (local.get $end) (local.get $have)) (i32.const 16))
                   (i32.const 1))))))
    (global.set $heap (local.get $end))
    (local.get $p))
  (func (export "opa_free") (param i32))
  (func (export "opa_value_free") (param i32))
  (func (export "opa_heap_ptr_get") (result i32) (global.get $heap))
  (func (export "opa_heap_ptr_set") (param i32) (global.set $heap (local.get 0)))
  (func (export "opa_heap_blocks_stash"))
  (func (export "opa_heap_blocks_restore"))
  (func (export "opa_heap_stash_clear"))

  ;; --- values: length, JSON text, NUL ---------------------------------------

  (func $strlen (param $p i32) (result i32)
    (local $n i32)
    (block $done
      (loop $l
        (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $l)))
    (local.get $n))

  (func $value (param $src i32) (param $len i32) (result i32)
    (local $v i32)
    (local.set $v (call $malloc (i32.add (local.get $len) (i32.const 5))))
    (i32.store (local.get $v) (local.get $len))
    (memory.copy (i32.add (local.get $v) (i32.const 4)) (local.get $src) (local.get $len))
    (i32.store8 (i32.add (i32.add (local.get $v) (i32.const 4)) (local.get $len)) (i32.const 0))
    (local.get $v))

  (func $static (param $text i32) (result i32)
    (call $value (local.get $text) (call $strlen (local.get $text))))

  (func (export "opa_json_parse") (param i32 i32) (result i32)
    (call $value (local.get 0) (local.get 1)))
  (func (export "opa_value_parse") (param i32 i32) (result i32)
    (call $value (local.get 0) (local.get 1)))
  (func (export "opa_json_dump") (param i32) (result i32)
    (i32.add (local.get 0) (i32.const 4)))
  (func (export "opa_value_dump") (param i32) (result i32)
    (i32.add (local.get 0) (i32.const 4)))
  ;; Data updates are not supported by this module: OPA_ERR_INTERNAL.
  (func (export "opa_value_add_path") (param i32 i32 i32) (result i32) (i32.const 1))
  (func (export "opa_value_remove_path") (param i32 i32) (result i32) (i32.const 1))

  (func (export "builtins") (result i32) (call $static (i32.const 1024)))
  (func (export "entrypoints") (result i32) (call $static (i32.const 1280)))

  ;; --- the rule ---------------------------------------------------------------

  (func $eq (param $a i32) (param $b i32) (param $n i32) (result i32)
    (local $i i32)
    (block $done
      (loop $l
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (if (i32.ne (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                    (i32.load8_u (i32.add (local.get $b) (local.get $i))))
          (then (return (i32.const 0))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $l)))
    (i32.const 1))

  ;; Offset of needle in haystack, or -1.
  (func $find (param $h i32) (param $hn i32) (param $n i32) (param $nn i32) (result i32)
    (local $i i32) (local $first i32)
    (local.set $first (i32.load8_u (local.get $n)))
    (block $none
      (loop $l
        (br_if $none (i32.gt_s (i32.add (local.get $i) (local.get $nn)) (local.get $hn)))
        (if (i32.eq (i32.load8_u (i32.add (local.get $h) (local.get $i))) (local.get $first))
          (then
            (if (call $eq (i32.add (local.get $h) (local.get $i)) (local.get $n) (local.get $nn))
              (then (return (local.get $i))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $l)))
    (i32.const -1))

  ;; input.exe: sets $exe_ptr/$exe_len to its text; 0 when absent (null).
  (func $find_exe (param $in i32) (param $n i32) (result i32)
    (local $s i32) (local $e i32)
    (local.set $s (call $find (local.get $in) (local.get $n) (i32.const 1536) (i32.const 7)))
    (if (i32.lt_s (local.get $s) (i32.const 0)) (then (return (i32.const 0))))
    (local.set $s (i32.add (i32.add (local.get $in) (local.get $s)) (i32.const 7)))
    (local.set $e (local.get $s))
    (block $d
      (loop $l
        (br_if $d (i32.eq (i32.load8_u (local.get $e)) (i32.const 34)))
        (local.set $e (i32.add (local.get $e) (i32.const 1)))
        (br $l)))
    (global.set $exe_ptr (local.get $s))
    (global.set $exe_len (i32.sub (local.get $e) (local.get $s)))
    (i32.const 1))

  ;; input.exe in data.allowed
  (func $allowed (param $data i32) (result i32)
    (local $text i32) (local $p i32) (local $end i32) (local $s i32) (local $c i32)
    (local.set $text (i32.add (local.get $data) (i32.const 4)))
    (local.set $p (call $find (local.get $text) (i32.load (local.get $data))
                              (i32.const 1552) (i32.const 10)))
    (if (i32.lt_s (local.get $p) (i32.const 0)) (then (return (i32.const 0))))
    (local.set $p (i32.add (i32.add (local.get $text) (local.get $p)) (i32.const 10)))
    (local.set $end (i32.add (local.get $text) (i32.load (local.get $data))))
    (loop $next
      (block $quote
        (loop $skip
          (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (i32.const 0))))
          (local.set $c (i32.load8_u (local.get $p)))
          (if (i32.eq (local.get $c) (i32.const 93)) (then (return (i32.const 0))))
          (br_if $quote (i32.eq (local.get $c) (i32.const 34)))
          (local.set $p (i32.add (local.get $p) (i32.const 1)))
          (br $skip)))
      (local.set $s (i32.add (local.get $p) (i32.const 1)))
      (local.set $p (local.get $s))
      (block $close
        (loop $str
          (br_if $close (i32.ge_u (local.get $p) (local.get $end)))
          (br_if $close (i32.eq (i32.load8_u (local.get $p)) (i32.const 34)))
          (local.set $p (i32.add (local.get $p) (i32.const 1)))
          (br $str)))
      (if (i32.eq (i32.sub (local.get $p) (local.get $s)) (global.get $exe_len))
        (then
          (if (call $eq (local.get $s) (global.get $exe_ptr) (global.get $exe_len))
            (then (return (i32.const 1))))))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br $next))
    (i32.const 0))

  ;; startswith(input.exe, "/tmp/") through the host's builtin 0.
  (func $in_tmp (result i32)
    (local $r i32)
    (local.set $r
      (call $opa_builtin2
        (i32.const 0) (i32.const 0)
        ;; the exe's JSON string, quotes included, as it is in the input
        (call $value (i32.sub (global.get $exe_ptr) (i32.const 1))
                     (i32.add (global.get $exe_len) (i32.const 2)))
        (call $value (i32.const 1568) (i32.const 7))))
    (i32.and (i32.eq (i32.load (local.get $r)) (i32.const 4))
             (call $eq (i32.add (local.get $r) (i32.const 4)) (i32.const 2176) (i32.const 4))))

  ;; The result set of entrypoint $ep, as a value.
  (func $evaluate (param $ep i32) (param $data i32) (param $in i32) (param $n i32) (result i32)
    (local $found i32) (local $ok i32)
    (if (i32.eq (local.get $ep) (i32.const 6))
      (then (return (call $static (i32.const 1728)))))
    (local.set $found (call $find_exe (local.get $in) (local.get $n)))
    (if (local.get $found)
      (then (local.set $ok (call $allowed (local.get $data)))))
    (block $abort
      (block $e5
        (block $e4
          (block $e3
            (block $e2
              (block $e1
                (block $e0
                  (br_table $e0 $e1 $e2 $e3 $e4 $e5 $abort (local.get $ep)))
                ;; 0: guardian/allow
                (if (local.get $ok) (then (return (call $static (i32.const 1600)))))
                (return (call $static (i32.const 1664))))
              ;; 1: guardian/verdict
              (if (local.get $ok) (then (return (call $static (i32.const 1728)))))
              (if (local.get $found)
                (then (if (call $in_tmp) (then (return (call $static (i32.const 1856)))))))
              (return (call $static (i32.const 1792))))
            ;; 2: guardian/debug
            (call $opa_println (i32.const 2240))
            (return (call $static (i32.const 1984))))
          ;; 3: forever
          (loop $forever (br $forever)))
        ;; 4: memory past any limit
        (drop (memory.grow (i32.const 1000)))
        (return (call $static (i32.const 1728))))
      ;; 5: malformed
      (return (call $static (i32.const 2048))))
    (call $opa_abort (i32.const 2112))
    (unreachable))

  ;; --- evaluation: the context calls (1.0) and the one call (1.2) ----------

  (func (export "opa_eval_ctx_new") (result i32)
    (local $c i32)
    (local.set $c (call $malloc (i32.const 16)))
    (i32.store (local.get $c) (i32.const 0))
    (i32.store offset=4 (local.get $c) (i32.const 0))
    (i32.store offset=8 (local.get $c) (i32.const 0))
    (i32.store offset=12 (local.get $c) (i32.const 0))
    (local.get $c))
  (func (export "opa_eval_ctx_set_input") (param i32 i32)
    (i32.store (local.get 0) (local.get 1)))
  (func (export "opa_eval_ctx_set_data") (param i32 i32)
    (i32.store offset=4 (local.get 0) (local.get 1)))
  (func (export "opa_eval_ctx_set_entrypoint") (param i32 i32)
    (i32.store offset=8 (local.get 0) (local.get 1)))
  (func (export "opa_eval_ctx_get_result") (param i32) (result i32)
    (i32.load offset=12 (local.get 0)))
  (func (export "eval") (param $c i32) (result i32)
    (i32.store offset=12 (local.get $c)
      (call $evaluate
        (i32.load offset=8 (local.get $c))
        (i32.load offset=4 (local.get $c))
        (i32.add (i32.load (local.get $c)) (i32.const 4))
        (i32.load (i32.load (local.get $c)))))
    (i32.const 0))

  (func (export "opa_eval")
    (param $reserved i32) (param $ep i32) (param $data i32) (param $in i32) (param $n i32)
    (param $heap i32) (param $format i32) (result i32)
    (global.set $heap (local.get $heap))
    (i32.add (call $evaluate (local.get $ep) (local.get $data) (local.get $in) (local.get $n))
             (i32.const 4)))
)
