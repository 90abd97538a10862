"""The report page's HTML shell and style sheet: ``TEMPLATE.format(title=..., body=...)``.

One self-contained page (no scripts, no fonts or files from the network) whose layout works from
a phone's width to a wide screen.
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
:root {{ --ink: #22222a; --soft: #6b6b78; --line: #e3e3ea; --bg: #f6f6f9; }}
* {{ box-sizing: border-box; }}
body {{ margin: 0; padding: 24px clamp(12px, 4vw, 48px) 64px; background: var(--bg);
  color: var(--ink); font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }}
main {{ max-width: 1180px; margin: 0 auto; }}
h1 {{ margin: 0; font-size: 26px; }}
h2 {{ margin: 0 0 2px; font-size: 19px; display: flex; align-items: center; gap: 8px; }}
h3 {{ margin: 14px 0 6px; font-size: 13px; font-weight: 600; color: var(--soft);
  text-transform: uppercase; letter-spacing: .04em; }}
a {{ color: #2c5fb3; }}
.sub, .stats, figcaption, .note {{ color: var(--soft); }}
.sub {{ margin: 2px 0 16px; }}
.facts {{ display: flex; flex-wrap: wrap; gap: 8px; margin: 0 0 16px; }}
.facts div {{ background: #fff; border: 1px solid var(--line); border-radius: 8px;
  padding: 6px 12px; }}
.facts dt {{ font-size: 11px; color: var(--soft); text-transform: uppercase; }}
.facts dd {{ margin: 0; font-weight: 600; max-width: 420px; overflow-wrap: anywhere; }}
nav {{ display: flex; flex-wrap: wrap; gap: 6px; margin: 0 0 20px; }}
nav a {{ display: flex; align-items: center; gap: 6px; padding: 3px 10px; background: #fff;
  border: 1px solid var(--line); border-radius: 999px; text-decoration: none; color: var(--ink); }}
nav small {{ color: var(--soft); }}
.dot {{ display: inline-block; width: 12px; height: 12px; border-radius: 50%; }}
.overview {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(min(420px, 100%), 1fr));
  grid-auto-flow: dense; gap: 16px; margin-bottom: 24px; align-items: start; }}
figure {{ margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 10px;
  padding: 12px; }}
figure.wide {{ grid-column: 1 / -1; }}
figure.tall {{ grid-row: span 2; }}
figure img {{ width: 100%; height: auto; display: block; }}
figcaption {{ font-size: 13px; margin-top: 6px; }}
.cluster {{ background: #fff; border: 1px solid var(--line); border-left: 6px solid;
  border-radius: 10px; padding: 14px 18px 18px; margin: 0 0 16px; }}
.stats {{ margin: 0; }}
.sheetbox {{ position: relative; display: inline-block; max-width: 100%; }}
.sheetbox .sheet {{ display: block; }}
.tile {{ position: absolute; }}
.tile:hover {{ outline: 2px solid #3b6fd8; }}
.warning {{ background: #fff4d6; border-left: 4px solid #e0a800; padding: 8px 12px; }}
.folder {{ font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; color: var(--soft);
  font-weight: normal; margin-left: auto; }}
img.sheet {{ max-width: 100%; height: auto; display: block; image-rendering: auto; }}
</style>
</head>
<body><main>
{body}
</main></body>
</html>
"""
