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

decision := {
	"allow": allow,
	"obligations": obligations,
	"reasons": reasons,
}

default allow := false

allow if is_admin

obligations := session_obligations if {
	allow
	ssh_action
} else := {}

reasons := [] if {
	allow
} else := sort(denials) if {
	count(denials) > 0
} else := [sprintf("no rule allows %s on %s %s for %s", [action, resource_kind, resource_name, user_name])]

# Helpers over the input, total even when a field is missing.

action := object.get(input, "action", "")

resource := object.get(input, "resource", {})

resource_kind := object.get(resource, "kind", "")

resource_name := object.get(resource, "name", "")

resource_owner := object.get(resource, "owner", null)

user := object.get(input, ["context", "user"], {})

user_name := object.get(user, "name", "")

session_id := object.get(input, ["context", "session_id"], null)

roles contains role if {
	some role in object.get(user, "roles", [])
	is_string(role)
}

default is_admin := false

is_admin if "admin" in roles

# --- SSH access to workspaces: ownership, forwarding, session obligations ---

port_forward_actions := {"ssh.direct-tcpip", "ssh.tcpip-forward"}

max_session_seconds := 28800

ssh_action if startswith(action, "ssh.")

owns_workspace if {
	resource_kind == "workspace"
	user_name != ""
	resource_owner == user_name
}

default port_forwarding := false

port_forwarding if "tunneler" in roles

port_forwarding if is_admin

ssh_feature_denied if {
	action in port_forward_actions
	not port_forwarding
}

ssh_feature_denied if action == "ssh.x11"

allow if {
	ssh_action
	owns_workspace
	not ssh_feature_denied
}

session_obligations := {
	"record_session": "contractor" in roles,
	"sudo": "sudoer" in roles,
	"privileged": false,
	"agent_forwarding": true,
	"port_forwarding": port_forwarding,
	"x11_forwarding": is_admin,
	"max_session_seconds": max_session_seconds,
	"require_mfa": false,
}

denials contains msg if {
	ssh_action
	resource_kind != "workspace"
	msg := sprintf("%s needs a workspace, not a %s", [action, resource_kind])
}

denials contains msg if {
	ssh_action
	resource_kind == "workspace"
	not owns_workspace
	msg := owner_reason
}

owner_reason := sprintf("workspace %s is owned by %s", [resource_name, resource_owner]) if {
	is_string(resource_owner)
	resource_owner != ""
} else := sprintf("workspace %s has no owner", [resource_name])

denials contains "port forwarding requires role tunneler" if {
	action in port_forward_actions
	not port_forwarding
}

denials contains "X11 forwarding is disabled" if action == "ssh.x11"

# --- Authentication methods, broker credentials, identity administration ---

auth_method := object.get(input, ["context", "auth_method"], null)

enrolled_methods contains method if {
	some method in object.get(user, "auth_methods", [])
	is_string(method)
}

# user.auth: the method used must be one the user has enrolled (password needs a password).
allow if {
	action == "user.auth"
	auth_method in enrolled_methods
}

denials contains msg if {
	action == "user.auth"
	auth_method == "password"
	not "password" in enrolled_methods
	msg := sprintf("user %s has no password set", [user_name])
}

denials contains msg if {
	action == "user.auth"
	auth_method != "password"
	not auth_method in enrolled_methods
	msg := sprintf("user %s has not enrolled %v", [user_name, auth_method])
}

# credential.get: only within a session, and only the session user's own credentials.
live_session if {
	is_string(session_id)
	session_id != ""
}

allow if {
	action == "credential.get"
	live_session
	user_name != ""
	resource_owner == user_name
}

denials contains "credential.get needs a session" if {
	action == "credential.get"
	not live_session
}

denials contains msg if {
	action == "credential.get"
	resource_owner != user_name
	msg := sprintf("credential %s belongs to %v, not %s", [resource_name, resource_owner, user_name])
}

# identity.manage: admins only (they are allowed by the admin rule).
denials contains "identity.manage requires role admin" if {
	action == "identity.manage"
	not is_admin
}
