"""``fleetctl config show``: the connection settings in effect and where each came from."""

import typer

from ._shared import Format, OutputOpt, state

app = typer.Typer(help="fleetctl's own settings.", no_args_is_help=True)


@app.command("show")
def show(
    ctx: typer.Context,
    output: OutputOpt = Format.table,
) -> None:
    """Print each connection setting, its value and its source (flag, env, config, default)."""
    from ..settings import FIELDS

    st = state(ctx)
    s = st.settings
    values = {
        "manager": str(s.manager),
        "ca": str(s.ca) if s.ca else None,
        "cert": str(s.cert) if s.cert else None,
        "key": str(s.key) if s.key else None,
        "timeout": s.raw.get("timeout"),
        "insecure": s.insecure,
    }
    out = st.output()
    if output is Format.json:
        out.json(
            {
                "config_file": str(s.config_file) if s.config_file else None,
                "settings": {
                    name: {"value": values[name], "source": s.sources[name]} for name in FIELDS
                },
            }
        )
        return
    rows = [
        [
            name,
            "-"
            if values[name] is None
            else str(values[name]).lower()
            if isinstance(values[name], bool)
            else str(values[name]),
            s.sources[name],
        ]
        for name in FIELDS
    ]
    rows.insert(
        0,
        ["config file", str(s.config_file) if s.config_file else "-", s.sources["config_file"]],
    )
    out.table(["SETTING", "VALUE", "SOURCE"], rows)
