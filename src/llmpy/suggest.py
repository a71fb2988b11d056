"""Near-match suggestions for the words people mistype: a command, a flag, a choice, a model or GPU name.
`SuggestingParser` puts them into argparse's own errors (Python 3.12's suggest_on_error, for 3.10+), one line each."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Iterable


def close_match(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate nearest to `word` (difflib's ratio of at least 0.6), or None."""
    matches = difflib.get_close_matches(word, [str(c) for c in candidates], n=1)
    return matches[0] if matches else None


def did_you_mean(word: str, candidates: Iterable[str], quote: bool = True) -> str:
    """"; did you mean 'X'?" for the near match of `word`, or ""."""
    match = close_match(word, candidates)
    if match is None:
        return ""
    return f"; did you mean {match!r}?" if quote else f"; did you mean {match}?"


def invalid_choice_message(action: argparse.Action, value) -> str:
    """argparse's "invalid choice" with the near match; a subcommand is called a command."""
    choices = [str(c) for c in action.choices]
    hint = did_you_mean(str(value), choices)
    if isinstance(action, argparse._SubParsersAction):
        return f"unknown command {value!r}{hint} (commands: {', '.join(choices)})"
    return f"invalid choice: {value!r}{hint} (choose from {', '.join(choices)})"


def unrecognized_message(extras: list[str], parser: argparse.ArgumentParser) -> str:
    """argparse's "unrecognized arguments" with the near match of the first unknown option among `parser`'s, or a
    pointer to its --help."""
    message = f"unrecognized arguments: {' '.join(extras)}"
    unknown = next((arg.split("=", 1)[0] for arg in extras if arg.startswith("-")), None)
    if unknown is None:
        return message
    options = [option for action in parser._actions for option in action.option_strings
               if action.help != argparse.SUPPRESS]
    hint = did_you_mean(unknown, options, quote=False)
    return message + (hint or f"; `{parser.prog} --help` lists the options")


def chosen_subparser(parser: argparse.ArgumentParser, namespace: argparse.Namespace) -> argparse.ArgumentParser:
    """The subcommand's parser that `namespace` was parsed by (the parser itself when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(namespace, action.dest, None) or "")
            if chosen is not None:
                return chosen_subparser(chosen, namespace)
    return parser


class SuggestingParser(argparse.ArgumentParser):
    """An ArgumentParser whose unknown command, option or choice errors name the near match."""

    def _check_value(self, action: argparse.Action, value) -> None:
        if action.choices is not None and value not in action.choices:
            raise argparse.ArgumentError(None if isinstance(action, argparse._SubParsersAction) else action,
                                         invalid_choice_message(action, value))

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:  # said by the subcommand's parser, so its pointer to --help is that subcommand's
            chosen = chosen_subparser(self, namespace)
            chosen.error(unrecognized_message(extras, chosen))
        return namespace
