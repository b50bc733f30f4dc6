"""Reading and writing catalog YAML: a safe loader that remembers the line of every mapping,
list and key (and refuses duplicate keys) so import problems can point into the file, and a
dumper that writes the layout API.md shows.
"""

import yaml


class CatalogFileError(ValueError):
    """The text is not a YAML document at all; the message is one line."""


class _LineDict(dict):
    """A mapping read from YAML; `line` is where it starts, `key_lines` where each key is."""


class _LineList(list):
    """A sequence read from YAML; `line` is where it starts, `item_lines` where each item is."""


class _CatalogLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _CatalogLoader, node: yaml.MappingNode):
    data = _LineDict()
    data.line = node.start_mark.line + 1
    yield data
    _refuse_duplicate_keys(node)
    data.update(loader.construct_mapping(node))
    data.key_lines = {
        loader.construct_object(key): key.start_mark.line + 1
        for key, _value in node.value
        if isinstance(key, yaml.ScalarNode)
    }


def _refuse_duplicate_keys(node: yaml.MappingNode) -> None:
    # PyYAML keeps the last of two equal keys silently; in a catalog that hides a mistake.
    seen = set()
    for key, _value in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        if (key.tag, key.value) in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key.value!r}", key.start_mark
            )
        seen.add((key.tag, key.value))


def _construct_sequence(loader: _CatalogLoader, node: yaml.SequenceNode):
    data = _LineList()
    data.line = node.start_mark.line + 1
    data.item_lines = [item.start_mark.line + 1 for item in node.value]
    yield data
    data.extend(loader.construct_sequence(node))


_CatalogLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_CatalogLoader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def catalog_load_yaml(text: str):
    """Parse a catalog file, keeping line numbers for the problems `catalog_import` reports."""
    try:
        return yaml.load(text, Loader=_CatalogLoader)  # a SafeLoader: plain data only
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = " ".join(str(exc.problem or exc.context or "unreadable").split())
        raise CatalogFileError(f"invalid YAML{where}: {reason}") from None
    except yaml.YAMLError as exc:
        raise CatalogFileError(f"invalid YAML: {' '.join(str(exc).split())}") from None


class _CatalogDumper(yaml.SafeDumper):
    def increase_indent(self, flow=False, indentless=False):
        # Indent list items under their key, as in API.md's example.
        return super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None  # multi-line templates read best as blocks
    if any(char in value for char in "\r\x85\u2028\u2029"):
        style = '"'  # YAML folds these line breaks unless they are escaped
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_CatalogDumper.add_representer(str, _represent_str)


def catalog_dump_yaml(data: dict) -> str:
    return yaml.dump(
        data,
        Dumper=_CatalogDumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=4096,
    )


def _line(data, key=None) -> int | None:
    if key is not None and key in getattr(data, "key_lines", {}):
        return data.key_lines[key]
    return getattr(data, "line", None)
