# The allowlist of policies/examples/wat/opa-allowlist.wat, in Rego: the
# same rule guardian's tests and benchmark run by hand-written WAT, and
# the test `policy_rego::real_opa_build_output_runs_in_wasmi` builds with
#
#   opa build -t wasm -e guardian/verdict -e guardian/allow allowlist.rego
#
# when opa is on PATH. data.json is its data document (guardian carries it
# in the module's custom section "guardian.data": `guardian policy rego`).
package guardian

import rego.v1

default allow := false

allow if input.exe in data.allowed

default verdict := {"decision": "alert", "rule": 3}

verdict := "allow" if allow

verdict := {"decision": "deny", "rule": 7, "actions": ["kill"]} if {
	not allow
	startswith(input.exe, "/tmp/")
}
