# Stockade's default policy bundle: the decision every caller reads.
#
# Input (built by stockade.authz.build_input):
#   input.action    "ssh.connect", "ssh.exec", "credential.get", "user.auth", "identity.manage", ...
#   input.resource  {"kind", "name", "owner", "labels"}
#   input.context   {"user": {"name", "roles", "groups", "auth_methods"}, "source_ip",
#                    "auth_method", "mfa", "time", "session_id", ...action-specific extras}
#
# Output, data.stockade.decision:
#   {"allow": bool, "obligations": {...}, "reasons": [string]}
#   reasons explain a deny and are empty on an allow.
#
# Obligations (on every allowed ssh.* decision; other actions carry none):
#   record_session       bool  record the session (asciinema cast v2): true for role contractor
#   sudo                 bool  the workspace user may sudo: true only for role sudoer
#   privileged           bool  run the workspace privileged: always false here
#   agent_forwarding     bool  ssh -A: true for everyone
#   port_forwarding      bool  direct-tcpip / tcpip-forward: true for role tunneler (and admin)
#   x11_forwarding       bool  X11 forwarding: true only for role admin
#   max_session_seconds  int   hard limit on a session's length: 28800 (8 hours)
#   require_mfa          bool  the session needs a second factor: false here
#
# Rules of the bundle:
#   role admin may do everything;
#   a user may ssh.* only to workspaces they own (resource.owner == user.name);
#   port forwarding (ssh.direct-tcpip, ssh.tcpip-forward) needs role tunneler;
#   ssh.x11 is denied;
#   user.auth is allowed with a method the user has enrolled (password only with a password);
#   credential.get is allowed for the session's own user;
#   identity.manage is for role admin only.
#
# All rules of package stockade live in this one file: regorus 0.9.1 evaluates
# `with input as ...` (used by the tests) wrongly when a package is split across files.
package stockade

import rego.v1

# Rules read input fields directly: build_input always sends the full shape, and every helper
# rule costs an evaluation step in regorus, so the allow path uses as few as possible. Only the
# fallback reason uses object.get, to stay defined whatever the input holds.

decision := {"allow": true, "obligations": obligations, "reasons": []} if {
	allow
} else := {"allow": false, "obligations": {}, "reasons": deny_reasons}

deny_reasons := sort(denials) if {
	count(denials) > 0
} else := [sprintf("no rule allows %s on %s %s for %s", [
	object.get(input, "action", ""),
	object.get(input, ["resource", "kind"], ""),
	object.get(input, ["resource", "name"], ""),
	object.get(input, ["context", "user", "name"], ""),
])]

allow if "admin" in input.context.user.roles

# --- SSH access to workspaces: ownership, forwarding, session obligations ---

allow if {
	startswith(input.action, "ssh.")
	not input.action in {"ssh.direct-tcpip", "ssh.tcpip-forward", "ssh.x11"}
	input.resource.kind == "workspace"
	input.context.user.name != ""
	input.resource.owner == input.context.user.name
}

allow if {
	input.action in {"ssh.direct-tcpip", "ssh.tcpip-forward"}
	"tunneler" in input.context.user.roles
	input.resource.kind == "workspace"
	input.context.user.name != ""
	input.resource.owner == input.context.user.name
}

obligations := {
	"record_session": "contractor" in input.context.user.roles,
	"sudo": "sudoer" in input.context.user.roles,
	"privileged": false,
	"agent_forwarding": true,
	"port_forwarding": port_forwarding,
	"x11_forwarding": "admin" in input.context.user.roles,
	"max_session_seconds": 28800,
	"require_mfa": false,
} if {
	startswith(input.action, "ssh.")
} else := {}

default port_forwarding := false

port_forwarding if "tunneler" in input.context.user.roles

port_forwarding if "admin" in input.context.user.roles

ssh_to_workspace if {
	startswith(input.action, "ssh.")
	input.resource.kind == "workspace"
}

owned if {
	is_string(input.resource.owner)
	input.resource.owner != ""
}

denials contains msg if {
	startswith(input.action, "ssh.")
	input.resource.kind != "workspace"
	msg := sprintf("%s needs a workspace, not a %s", [input.action, input.resource.kind])
}

denials contains msg if {
	ssh_to_workspace
	owned
	input.resource.owner != input.context.user.name
	msg := sprintf("workspace %s is owned by %s", [input.resource.name, input.resource.owner])
}

denials contains msg if {
	ssh_to_workspace
	not owned
	msg := sprintf("workspace %s has no owner", [input.resource.name])
}

denials contains "port forwarding requires role tunneler" if {
	input.action in {"ssh.direct-tcpip", "ssh.tcpip-forward"}
	not "tunneler" in input.context.user.roles
}

denials contains "X11 forwarding is disabled" if input.action == "ssh.x11"

# --- Authentication methods, broker credentials, identity administration ---

# user.auth: the method used must be one the user has enrolled (password needs a password).
allow if {
	input.action == "user.auth"
	input.context.auth_method in input.context.user.auth_methods
}

denials contains msg if {
	input.action == "user.auth"
	input.context.auth_method == "password"
	not "password" in input.context.user.auth_methods
	msg := sprintf("user %s has no password set", [input.context.user.name])
}

denials contains msg if {
	input.action == "user.auth"
	input.context.auth_method != "password"
	not input.context.auth_method in input.context.user.auth_methods
	msg := sprintf("user %s has not enrolled %v", [input.context.user.name, input.context.auth_method])
}

# credential.get: only within a session, and only the session user's own credentials.
live_session if {
	is_string(input.context.session_id)
	input.context.session_id != ""
}

allow if {
	input.action == "credential.get"
	live_session
	input.context.user.name != ""
	input.resource.owner == input.context.user.name
}

denials contains "credential.get needs a session" if {
	input.action == "credential.get"
	not live_session
}

denials contains msg if {
	input.action == "credential.get"
	input.resource.owner != input.context.user.name
	msg := sprintf("credential %s belongs to %v, not %s", [
		input.resource.name,
		input.resource.owner,
		input.context.user.name,
	])
}

# identity.manage: admins only (they are allowed by the admin rule).
denials contains "identity.manage requires role admin" if {
	input.action == "identity.manage"
	not "admin" in input.context.user.roles
}

# --- Audit trail (issue 11): who may search the audit store ---

# audit.search: role auditor reads the audit trail and nothing else (admins may anyway).
allow if {
	input.action == "audit.search"
	"auditor" in input.context.user.roles
}

denials contains "audit.search requires role admin or auditor" if {
	input.action == "audit.search"
	not "auditor" in input.context.user.roles
	not "admin" in input.context.user.roles
}
