"""Answer a relayed one-time-password prompt in the client, as an in-process login would.

The agent relays a keyboard-interactive challenge to the client whose call caused the
login; this module answers it there with the library's own answerer,
``dispatch.ssh.auth.default_kbdint_handler``: on this process's terminal, or through
``SSH_ASKPASS`` as ``SSH_ASKPASS_REQUIRE`` says. Imported only when a prompt arrives, so
a call that needs no login costs no asyncssh import.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence

__all__ = ["answer"]


def answer(
    host: str, name: str, instructions: str, prompts: Sequence[tuple[str, bool]]
) -> tuple[list[str] | None, str | None]:
    """Answer a keyboard-interactive challenge for ``host`` in this process.

    Args:
        host: the host asking (shown with the prompt, ``(host) prompt`` as ssh does).
        name: the server's name for the challenge.
        instructions: the server's instructions (shown on a terminal).
        prompts: (prompt text, echo) pairs.

    Returns:
        ``(answers, None)``, one answer per prompt; or ``(None, why)`` when this process
        cannot answer (no terminal, no askpass) or the user gave up. The agent raises
        ``dispatch.ssh.auth.CannotAnswer`` with ``why`` (see ``agent.server``), so the
        failed call says why, as an in-process login would.
    """
    from ..ssh.auth import CannotAnswer, default_answer_route, default_kbdint_handler

    how, why = default_answer_route()
    if how is None:
        return None, why

    def ask() -> Sequence[str] | None:
        return asyncio.run(default_kbdint_handler(host, name, instructions, list(prompts)))

    try:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            result = ask()
        else:  # a blocking call made where a loop runs (a Jupyter cell): answer beside it
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                result = pool.submit(ask).result()
    except CannotAnswer as exc:  # the route changed since it was checked above
        return None, exc.reason
    if result is None:
        return None, f"the {how} prompt was not answered (cancelled or no input)"
    return list(result), None
