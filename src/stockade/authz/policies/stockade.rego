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
#   record_session       bool  record the session (asciinema cast v2): true for role contractor;
#                              file transfers (scp) then only as audited transfers
#   record_input         bool  record the input of interactive sessions too: true for contractor
#   sudo                 bool  the workspace user may sudo: true only for role sudoer
#   privileged           bool  run the workspace privileged: always false here
#   agent_forwarding     bool  ssh -A: true for everyone
#   max_session_seconds  int   hard limit on a session's length: 28800 (8 hours)
#   require_mfa          bool  the session needs a second factor: false here
# The set is closed (stockade.authz.Obligations): any other obligation makes the decision a deny.
# Port forwarding is decided by its own actions (ssh.direct-tcpip, ssh.tcpip-forward); X11 is
# never offered (the gateway lets asyncssh refuse it).
#
# Rules of the bundle:
#   role admin may do everything;
#   a user may ssh.* only to workspaces they own (resource.owner == user.name);
#   port forwarding (ssh.direct-tcpip, ssh.tcpip-forward) needs role tunneler;
#   user.auth is allowed with a method the user has enrolled (password only with a password);
#   credential.get is allowed for the session's own user;
#   identity.manage is for role admin only.
#
# All rules of package stockade live in this one file: regorus 0.9.1 evaluates
# `with input as ...` (used by the tests) wrongly when a package is split across files.
package stockade

import rego.v1

# The roles this bundle gives meaning to. `stockade users` refuses any other (a typo such as
# "contracter" would silently grant nothing); a custom bundle declares its own.
roles := {"admin", "auditor", "contractor", "developer", "sudoer", "tunneler"}

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
	not input.action in {"ssh.direct-tcpip", "ssh.tcpip-forward"}
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
	"record_input": "contractor" in input.context.user.roles,
	"sudo": "sudoer" in input.context.user.roles,
	"privileged": false,
	"agent_forwarding": true,
	"max_session_seconds": 28800,
	"require_mfa": false,
} if {
	startswith(input.action, "ssh.")
} else := worktrace_obligations

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

# --- Worktrace responses (issue 15; merged by the lead) ---
#
# input.action == "worktrace.respond": Worktrace asks how to answer one alert.
#   input.resource  {"kind": "session", "name": session id or "", "owner": user or null,
#                    "labels": {"kind", "rule", "workspace"?, "pod"?}}
#   input.context.alert  {"id", "kind": "rule" | "attack_path" | "anomaly", "rule", "name",
#                         "confidence": number, "rules": [rule ids of an attack path]}
# The decision allows; its obligations say what to apply:
#   kill_session  bool  end the session: any alert of confidence >= 0.9 with a session (or,
#                       from a Pod, every session of its workspace)
#   ban_user      bool  refuse the user's logins for a while: attack paths of confidence >= 0.97
# Anomalies never kill or ban on their own. The ssh obligations rule above falls through to
# worktrace_obligations (its final else), so the two never conflict.

allow if input.action == "worktrace.respond"

default worktrace_obligations := {}

worktrace_obligations := {
	"kill_session": worktrace_kill,
	"ban_user": worktrace_ban,
} if input.action == "worktrace.respond"

default worktrace_kill := false

worktrace_kill if {
	input.context.alert.kind in {"rule", "attack_path"}
	input.context.alert.confidence >= 0.9
	is_string(input.context.session_id)
	input.context.session_id != ""
}

# A Pod's alert names no session (one Pod serves all of the workspace's sessions): it ends
# every session in that workspace.
worktrace_kill if {
	input.context.alert.kind in {"rule", "attack_path"}
	input.context.alert.confidence >= 0.9
	not is_string(input.context.session_id)
	is_string(input.resource.labels.workspace)
	input.resource.labels.workspace != ""
}

default worktrace_ban := false

worktrace_ban if {
	input.context.alert.kind == "attack_path"
	input.context.alert.confidence >= 0.97
	is_string(input.resource.owner)
	input.resource.owner != ""
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

# --- Web console (issue 12): who sees it and what they may do there ---
#
# console.view   every page and read (resource kind "console" with the page as name, or
#                "session" with the session id): roles admin and auditor
# console.ban    ban or unban a source (resource kind "shield.ban" / "shield.unban", name the
#                source): admins only (the admin rule)
# console.kill   kill a live session (resource kind "session"): admins only (the admin rule)
# An auditor is read-only: every ban and kill is denied with a reason naming the role it needs.
allow if {
	input.action == "console.view"
	"auditor" in input.context.user.roles
}

denials contains "console.view requires role admin or auditor" if {
	input.action == "console.view"
	not "auditor" in input.context.user.roles
	not "admin" in input.context.user.roles
}

denials contains msg if {
	input.action in {"console.ban", "console.kill"}
	not "admin" in input.context.user.roles
	msg := sprintf("%s requires role admin", [input.action])
}
