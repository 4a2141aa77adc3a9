"""The configs' JSON format: 4-space indent, key order kept, and a list or object on one line when it is
short (at most 90 characters besides its indent and key) and holds no list or object itself.

    python bin/json_format.py --check FILE...   # exit 1 naming each file that is not in this format
    python bin/json_format.py FILE...           # rewrite them in it

compact-json's own command line ignores its table settings, so its formatter is set up here.
"""

import json
import sys

from compact_json import Formatter


def formatted(path: str) -> str:
    formatter = Formatter()
    formatter.indent_spaces = 4
    formatter.max_inline_length = 90
    formatter.max_inline_complexity = 1
    formatter.max_compact_list_complexity = 0  # a list that does not fit on one line: one item per line
    formatter.table_dict_minimum_similarity = formatter.table_list_minimum_similarity = 101  # no tables
    formatter.simple_bracket_padding = formatter.nested_bracket_padding = False
    formatter.ensure_ascii = False
    formatter.omit_trailing_whitespace = True
    with open(path, encoding="utf-8") as f:
        return formatter.serialize(json.load(f)) + "\n"


def main(args: list[str]) -> int:
    check = args[:1] == ["--check"]
    wrong = []
    for path in args[1:] if check else args:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = formatted(path)
        if new != text:
            wrong.append(path)
            if not check:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(new)
    for path in wrong if check else []:
        print(f"{path}: not in the configs' JSON format (fix: bash bin/lint.sh --fix)")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
