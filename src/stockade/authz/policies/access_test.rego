# Tests of user.auth, credential.get, identity.manage and the default deny.
package stockade_test

import rego.v1

import data.stockade

request(action, kind, name, owner, user_name, roles, extra) := object.union(
	{
		"action": action,
		"resource": {"kind": kind, "name": name, "owner": owner, "labels": {}},
		"context": {
			"user": {"name": user_name, "roles": roles, "groups": [], "auth_methods": []},
			"source_ip": "203.0.113.7",
			"auth_method": "publickey",
			"mfa": false,
			"time": "2024-05-01T12:00:00Z",
			"session_id": null,
		},
	},
	extra,
)

auth(methods, method) := request(
	"user.auth", "user", "alice", "alice", "alice", [],
	{"context": {"user": {"name": "alice", "roles": [], "auth_methods": methods}, "auth_method": method}},
)

test_password_auth_with_password if {
	d := stockade.decision with input as auth(["publickey", "password"], "password")
	d.allow
	d.obligations == {}
}

test_password_auth_without_password if {
	d := stockade.decision with input as auth(["publickey"], "password")
	not d.allow
	d.reasons == ["user alice has no password set"]
}

test_publickey_auth_with_key if {
	stockade.decision.allow with input as auth(["publickey"], "publickey")
}

test_auth_with_unenrolled_method if {
	d := stockade.decision with input as auth(["password"], "publickey")
	not d.allow
	d.reasons == ["user alice has not enrolled publickey"]
}

credential(owner, session) := request(
	"credential.get", "credential", "git:github.com", owner, "alice", ["dev"],
	{"context": {"session_id": session}},
)

test_credential_for_own_session if {
	d := stockade.decision with input as credential("alice", "s-1")
	d.allow
	d.obligations == {}
}

test_credential_of_someone_else if {
	d := stockade.decision with input as credential("bob", "s-1")
	not d.allow
	d.reasons == ["credential git:github.com belongs to bob, not alice"]
}

test_credential_without_session if {
	d := stockade.decision with input as credential("alice", null)
	not d.allow
	d.reasons == ["credential.get needs a session"]
}

test_identity_manage_admin_only if {
	stockade.decision.allow with input as request("identity.manage", "user", "bob", null, "root", ["admin"], {})
	d := stockade.decision with input as request("identity.manage", "user", "bob", null, "alice", ["sudoer", "tunneler"], {})
	not d.allow
	d.reasons == ["identity.manage requires role admin"]
}

test_unknown_action_denied_with_reason if {
	d := stockade.decision with input as request("workspace.delete", "workspace", "ws1", "alice", "alice", ["dev"], {})
	not d.allow
	d.reasons == ["no rule allows workspace.delete on workspace ws1 for alice"]
}

test_admin_may_do_anything if {
	every action in ["workspace.delete", "identity.manage", "credential.get", "ssh.x11"] {
		stockade.decision.allow with input as request(action, "thing", "t", "bob", "root", ["admin"], {})
	}
}

test_empty_input_denied if {
	d := stockade.decision with input as {}
	not d.allow
	count(d.reasons) > 0
}
