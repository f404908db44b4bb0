"""The session state machine: which transitions exist, and nothing else.

This table is the single place transitions are allowed. ``docs/states.md`` is
generated from it (``python -m wa_daemon.daemon.sessions.states``) and a test keeps the
two identical.

There are no self-loops. A new QR while ``waiting_qr`` is a refresh event the
session handles without a transition, which is what makes the old production
error "Invalid state transition from waiting_qr to waiting_qr" impossible.
"""

from __future__ import annotations

from typing import Final

from ...protocol import State

S = State

# from-state -> {to-state: why this edge exists}
TRANSITIONS: Final[dict[State, dict[State, str]]] = {
    S.STOPPED: {
        S.STARTING: "connect, or restore after a daemon restart",
        S.LOGGED_OUT: "logout requested: saved auth wiped",
    },
    S.STARTING: {
        S.WAITING_QR: "the page shows a login QR",
        S.WAITING_CODE: "the page needs a login and the session links by phone number: a pairing code is shown",
        S.AUTHENTICATING: "saved auth found; the app is loading",
        S.CONNECTED: "saved auth found; the app is shown",
        S.RECONNECTING: "the browser died or the page was lost while starting",
        S.FAILED: "launch error, WhatsApp blocks the device or the web version, or the session was found inactive",
        S.STOPPED: "disconnect, delete or shutdown",
        S.LOGGED_OUT: "logout requested, or a linked profile relaunched to a QR (unlinked while no browser ran)",
    },
    S.WAITING_QR: {
        S.AUTHENTICATING: "the QR was scanned; the app is loading",
        S.CONNECTED: "the QR was scanned and the app is shown at once",
        S.RECONNECTING: "the browser died or the page was lost",
        S.FAILED: "qr_timeout, conflict, blocked, web_version_deprecated, or inactive",
        S.STOPPED: "disconnect, delete or shutdown",
        S.LOGGED_OUT: "logout requested before linking",
    },
    S.WAITING_CODE: {
        S.AUTHENTICATING: "the pairing code was entered on the phone; the app is loading",
        S.CONNECTED: "the pairing code was entered and the app is shown at once",
        S.RECONNECTING: "the browser died or the page was lost",
        S.FAILED: "code_timeout, conflict, blocked, web_version_deprecated, or inactive",
        S.STOPPED: "disconnect, delete or shutdown",
        S.LOGGED_OUT: "logout requested before linking",
    },
    S.AUTHENTICATING: {
        S.CONNECTED: "the app is shown",
        S.WAITING_QR: "the phone rejected the link; a new QR is shown",
        S.WAITING_CODE: "the phone rejected the link; a new pairing code is shown",
        S.RECONNECTING: "the browser died or the page was lost",
        S.FAILED: "conflict, blocked, web_version_deprecated, or inactive",
        S.LOGGED_OUT: "the phone unlinked the device, or logout requested",
        S.STOPPED: "disconnect, delete or shutdown",
    },
    S.CONNECTED: {
        S.RECONNECTING: "the browser died or the connection was lost, or the browser is recycled (memory_limit)",
        S.LOGGED_OUT: "the phone unlinked the device, or logout requested",
        S.FAILED: "conflict without takeover, blocked, or web_version_deprecated",
        S.STOPPED: "disconnect, delete, idle timeout or shutdown",
    },
    S.RECONNECTING: {
        S.WAITING_QR: "relaunched; the page shows a login QR (the session was not linked yet)",
        S.WAITING_CODE: "relaunched; a pairing code is shown (the session was not linked yet)",
        S.AUTHENTICATING: "relaunched; the app is loading",
        S.CONNECTED: "relaunched; the app is shown",
        S.FAILED: "max_reconnects, launch error, conflict, blocked, web_version_deprecated or inactive",
        S.LOGGED_OUT: "the phone unlinked the device (also while no browser ran), or logout requested",
        S.STOPPED: "disconnect, delete or shutdown",
    },
    S.FAILED: {
        S.STARTING: "connect (a new attempt)",
        S.STOPPED: "disconnect",
        S.LOGGED_OUT: "logout requested: saved auth wiped",
    },
    S.LOGGED_OUT: {
        S.STARTING: "connect (a new attempt, with a new QR)",
        S.STOPPED: "disconnect",
    },
}

# States in which a session owns a browser (or is about to): connect is a no-op there.
ACTIVE: Final = frozenset({S.STARTING, S.WAITING_QR, S.WAITING_CODE, S.AUTHENTICATING, S.CONNECTED, S.RECONNECTING})
# States from which connect begins a new attempt.
RESTARTABLE: Final = frozenset({S.STOPPED, S.FAILED, S.LOGGED_OUT})
# States that must carry a machine-readable reason.
NEEDS_REASON: Final = frozenset({S.FAILED, S.LOGGED_OUT})


def is_allowed(from_state: State, to_state: State) -> bool:
    return to_state in TRANSITIONS[from_state]


def render_markdown() -> str:
    """The transition table as Markdown, for docs/states.md."""
    lines = [
        "| from | to | when |",
        "|---|---|---|",
    ]
    for src, edges in TRANSITIONS.items():
        for dst, why in edges.items():
            lines.append(f"| `{src.value}` | `{dst.value}` | {why} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
