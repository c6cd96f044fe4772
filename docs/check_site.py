"""Check the built documentation site as a reader gets it: internal links, and two pages rendered by Chromium.

``python docs/check_site.py docs/_build/html`` (after ``sphinx-build``), run by ``.ci/run``:

1. every local ``href``/``src`` of every page points at a file of the build, and its ``#fragment`` at an ``id`` of
   that page; every link to this repository's files on GitHub (``.../blob/main/<path>``) names a file that exists;
2. headless Chromium (Debian's ``chromium``) renders ``index.html`` and ``npg.html``: the rendered DOM has the
   expected headings, every parameter of ``sb3_npg.NPG.__init__`` in NPG's parameter list, and every image loaded
   (``naturalWidth > 0``, read by a script added to a copy of the page); a screenshot of each goes to
   ``docs/_build/screenshots/``.
"""

import html.parser
import inspect
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse

REPO = pathlib.Path(__file__).resolve().parent.parent
SOURCE_URL = "https://github.com/sb3-npg/sb3_npg/"
EXPECTED_HEADINGS = {
    "index.html": ["sb3_npg: Natural Policy Gradient for Stable-Baselines3", "Citing"],
    "npg.html": [
        "NPG",
        "Notes",
        "Can I use?",
        "Example",
        "The algorithm",
        "Results",
        "How to replicate the results",
        "Parameters",
        "NPG Policies",
    ],
}
# added to a copy of each checked page: once everything is loaded, the images' sizes are written into the DOM
IMAGE_PROBE = """<script>
window.addEventListener("load", () => {
  const report = document.createElement("pre");
  report.id = "site-check-images";
  report.textContent = JSON.stringify(Array.from(document.images, (image) => [image.getAttribute("src"), image.naturalWidth]));
  document.body.appendChild(report);
});
</script>"""


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)
            if value and (name == "src" or (name == "href" and tag in ("a", "link"))):
                self.links.append(value)


def _parse(page: pathlib.Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def broken_links(site: pathlib.Path) -> list[str]:
    """Every local link of the site that does not resolve, and every link to a repository file that does not exist."""
    pages = {page: _parse(page) for page in site.rglob("*.html")}
    problems = []
    for page, parsed in pages.items():
        for link in parsed.links:
            if link.startswith(SOURCE_URL):
                match = re.match(re.escape(SOURCE_URL) + r"(blob|tree|raw)/main/([^#?]+)", link)
                path = REPO / urllib.parse.unquote(match.group(2)) if match else None
                if path is None or not (path.is_dir() if match.group(1) == "tree" else path.is_file()):
                    problems.append(f"{page.relative_to(site)}: {link} names no file of the repository")
                continue
            if re.match(r"^[a-z][a-z0-9+.-]*:", link) or link.startswith("//"):
                continue  # another site, mailto:, data:, javascript:
            target, _, fragment = link.partition("#")
            target = target.partition("?")[0]
            target_path = (page.parent / urllib.parse.unquote(target)).resolve() if target else page
            if not target_path.exists():
                problems.append(f"{page.relative_to(site)}: {link} -> no such file")
            elif fragment and target_path.suffix == ".html":
                ids = pages[target_path].ids if target_path in pages else _parse(target_path).ids
                if urllib.parse.unquote(fragment) not in ids:
                    problems.append(f"{page.relative_to(site)}: {link} -> no id {fragment!r}")
    return problems


def chromium(*arguments: str, profile: pathlib.Path) -> str:
    command = [
        shutil.which("chromium") or "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--run-all-compositor-stages-before-draw",
        "--virtual-time-budget=10000",
        *arguments,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


class _Rendered(html.parser.HTMLParser):
    """Headings' text, the NPG class's parameter names and the image probe's report, from a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.strong: list[str] = []
        self.images = ""
        self._open: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("h1", "h2", "h3", "strong") or (tag == "pre" and ("id", "site-check-images") in attrs):
            self._open, self._text = tag, []

    def handle_data(self, data: str) -> None:
        if self._open:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == self._open:
            text = "".join(self._text).replace("\uf0c1", "").replace("¶", "").strip()
            if tag == "strong":
                self.strong.append(text)
            elif tag == "pre":
                self.images = text
            else:
                self.headings.append(text)
            self._open = None


def rendered_problems(site: pathlib.Path, screenshots: pathlib.Path) -> list[str]:
    sys.path.insert(0, str(REPO))
    import sb3_npg

    parameters = [name for name in inspect.signature(sb3_npg.NPG.__init__).parameters if name != "self"]
    screenshots.mkdir(parents=True, exist_ok=True)
    problems = []
    with tempfile.TemporaryDirectory() as scratch:
        probed = pathlib.Path(scratch) / "html"
        shutil.copytree(site, probed)
        for name, headings in EXPECTED_HEADINGS.items():
            page = probed / name
            page.write_text(page.read_text(encoding="utf-8").replace("</body>", IMAGE_PROBE + "</body>"), encoding="utf-8")
            profile = pathlib.Path(scratch) / f"profile-{name}"
            rendered = _Rendered()
            rendered.feed(chromium("--dump-dom", page.as_uri(), profile=profile))
            missing = [heading for heading in headings if heading not in rendered.headings]
            if missing:
                problems.append(f"{name}: headings {missing} not rendered (rendered: {rendered.headings})")
            images = json.loads(rendered.images) if rendered.images else []
            if not images:
                problems.append(f"{name}: no image rendered")
            problems += [f"{name}: image {src} did not load" for src, width in images if width == 0]
            if name == "npg.html":
                absent = [parameter for parameter in parameters if parameter not in rendered.strong]
                if absent:
                    problems.append(f"npg.html: NPG's parameter list lacks {absent}")
            shot = screenshots / name.replace(".html", ".png")
            chromium(f"--screenshot={shot}", "--window-size=1280,2000", (site / name).resolve().as_uri(), profile=profile)
            if not shot.is_file() or shot.stat().st_size == 0:
                problems.append(f"{name}: no screenshot")
            print(f"{name}: {len(rendered.headings)} headings, {len(images)} images loaded, screenshot {shot}")
    return problems


def main() -> int:
    site = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "docs" / "_build" / "html").resolve()
    if not (site / "index.html").is_file():
        print(f"{site}: no built site (run sphinx-build first)")
        return 1
    problems = broken_links(site)
    print(f"internal links: {len(problems)} broken")
    problems += rendered_problems(site, site.parent / "screenshots")
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
