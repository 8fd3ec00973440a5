# Tests of the console actions: admin and auditor see it, only admin bans and kills.
package stockade_test

import rego.v1

import data.stockade

console_request(action, kind, roles) := {
	"action": action,
	"resource": {"kind": kind, "name": "x", "owner": null, "labels": {}},
	"context": {
		"user": {"name": "erin", "roles": roles, "groups": [], "auth_methods": []},
		"source_ip": "127.0.0.1",
		"auth_method": "console",
		"mfa": false,
		"time": "2024-05-01T12:00:00Z",
		"session_id": null,
	},
}

test_console_view_admin_and_auditor if {
	every roles in [["admin"], ["auditor"], ["auditor", "developer"]] {
		stockade.decision.allow with input as console_request("console.view", "console", roles)
	}
}

test_console_view_others_denied if {
	every roles in [[], ["developer"], ["contractor", "sudoer", "tunneler"]] {
		d := stockade.decision with input as console_request("console.view", "console", roles)
		not d.allow
		d.reasons == ["console.view requires role admin or auditor"]
	}
}

test_console_ban_and_kill_admin_only if {
	stockade.decision.allow with input as console_request("console.ban", "shield.ban", ["admin"])
	stockade.decision.allow with input as console_request("console.kill", "session", ["admin"])
	every action in ["console.ban", "console.kill"] {
		d := stockade.decision with input as console_request(action, "session", ["auditor"])
		not d.allow
		d.reasons == [sprintf("%s requires role admin", [action])]
	}
}
