# Tests of SSH access and each role's session obligations (run: stockade policy test).
package stockade_test

import rego.v1

import data.stockade

ssh(action, name, roles, owner) := {
	"action": action,
	"resource": {"kind": "workspace", "name": "ws1", "owner": owner, "labels": {}},
	"context": {
		"user": {"name": name, "roles": roles, "groups": [], "auth_methods": ["publickey"]},
		"source_ip": "203.0.113.7",
		"auth_method": "publickey",
		"mfa": false,
		"time": "2024-05-01T12:00:00Z",
		"session_id": null,
	},
}

base_obligations := {
	"record_session": false,
	"record_input": false,
	"sudo": false,
	"privileged": false,
	"agent_forwarding": true,
	"max_session_seconds": 28800,
	"require_mfa": false,
}

test_owner_connects_with_base_obligations if {
	d := stockade.decision with input as ssh("ssh.connect", "alice", [], "alice")
	d.allow
	d.obligations == base_obligations
	d.reasons == []
}

test_owner_may_exec if {
	stockade.decision.allow with input as ssh("ssh.exec", "alice", ["dev"], "alice")
}

test_other_users_workspace_denied_with_owner if {
	d := stockade.decision with input as ssh("ssh.connect", "alice", ["dev"], "bob")
	not d.allow
	d.obligations == {}
	d.reasons == ["workspace ws1 is owned by bob"]
}

test_unowned_workspace_denied if {
	d := stockade.decision with input as ssh("ssh.connect", "alice", [], null)
	not d.allow
	d.reasons == ["workspace ws1 has no owner"]
}

test_ssh_to_non_workspace_denied if {
	inp := object.union(ssh("ssh.connect", "alice", [], "alice"), {"resource": {"kind": "credential"}})
	d := stockade.decision with input as inp
	not d.allow
	d.reasons == ["ssh.connect needs a workspace, not a credential"]
}

test_admin_connects_anywhere if {
	d := stockade.decision with input as ssh("ssh.connect", "root", ["admin"], "bob")
	d.allow
	d.obligations == base_obligations
}

test_contractor_is_recorded if {
	d := stockade.decision with input as ssh("ssh.connect", "carol", ["contractor"], "carol")
	d.allow
	d.obligations == object.union(base_obligations, {"record_session": true, "record_input": true})
}

test_contractor_admin_is_still_recorded if {
	d := stockade.decision with input as ssh("ssh.connect", "carol", ["contractor", "admin"], "bob")
	d.allow
	d.obligations.record_session == true
}

test_sudoer_gets_sudo if {
	d := stockade.decision with input as ssh("ssh.connect", "sam", ["sudoer"], "sam")
	d.allow
	d.obligations == object.union(base_obligations, {"sudo": true})
}

test_admin_without_sudoer_gets_no_sudo if {
	d := stockade.decision with input as ssh("ssh.connect", "root", ["admin"], "root")
	d.obligations.sudo == false
}

test_tunneler_may_forward_ports if {
	d := stockade.decision with input as ssh("ssh.direct-tcpip", "tina", ["tunneler"], "tina")
	d.allow
	d.obligations == base_obligations
	stockade.decision.allow with input as ssh("ssh.tcpip-forward", "tina", ["tunneler"], "tina")
}

test_port_forwarding_denied_without_tunneler if {
	some action in ["ssh.direct-tcpip", "ssh.tcpip-forward"]
	d := stockade.decision with input as ssh(action, "alice", ["dev", "sudoer"], "alice")
	not d.allow
	d.reasons == ["port forwarding requires role tunneler"]
}

test_agent_forwarding_for_everyone if {
	every roles in [[], ["contractor"], ["sudoer"], ["tunneler"], ["admin"]] {
		d := stockade.decision with input as ssh("ssh.agent", "u", roles, "u")
		d.allow
		d.obligations.agent_forwarding == true
		d.obligations.max_session_seconds == 28800
	}
}

test_all_roles_together if {
	d := stockade.decision with input as ssh("ssh.connect", "x", ["contractor", "sudoer", "tunneler"], "x")
	d.obligations == object.union(base_obligations, {"record_session": true, "record_input": true, "sudo": true})
}
