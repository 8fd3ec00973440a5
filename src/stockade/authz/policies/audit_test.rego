# Tests of audit.search: roles admin and auditor only; auditor is read-only.
package stockade_test

import rego.v1

import data.stockade

audit_request(action, roles) := {
	"action": action,
	"resource": {"kind": "audit", "name": "events", "owner": null, "labels": {}},
	"context": {
		"user": {"name": "erin", "roles": roles, "groups": [], "auth_methods": []},
		"source_ip": "203.0.113.7",
		"auth_method": "token",
		"mfa": false,
		"time": "2024-05-01T12:00:00Z",
		"session_id": null,
	},
}

test_audit_search_auditor if {
	stockade.decision.allow with input as audit_request("audit.search", ["auditor"])
}

test_audit_search_admin if {
	stockade.decision.allow with input as audit_request("audit.search", ["admin"])
}

test_audit_search_others_denied if {
	every roles in [[], ["dev"], ["contractor", "sudoer", "tunneler"]] {
		d := stockade.decision with input as audit_request("audit.search", roles)
		not d.allow
		d.reasons == ["audit.search requires role admin or auditor"]
	}
}

test_auditor_is_read_only if {
	every action in ["identity.manage", "credential.get", "ssh.shell", "workspace.delete", "audit.delete"] {
		not stockade.decision.allow with input as audit_request(action, ["auditor"])
	}
}
