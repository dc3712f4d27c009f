using System.Net;
using System.Text;
using System.Text.RegularExpressions;

namespace FastAttention.Lab.Reports;

/// <summary>
/// Turns the markdown the reports write into one self-contained HTML page: headings, paragraphs, bullet
/// lists, pipe tables, <c>`code`</c>, <c>**bold**</c> and <c>[text](link)</c>; an image <c>![alt](name.svg)</c>
/// becomes the SVG itself, inline, so the page needs no other file and no network. Only this subset is
/// understood (it is what the reports produce); anything else is shown as text, escaped.
/// </summary>
internal static partial class MarkdownHtml
{
    [GeneratedRegex(@"^!\[(?<alt>[^\]]*)\]\((?<src>[^)]+)\)$")]
    private static partial Regex Image();

    [GeneratedRegex(@"`(?<code>[^`]+)`|\*\*(?<bold>.+?)\*\*|\[(?<text>[^\]]+)\]\((?<href>[^)\s]+)\)")]
    private static partial Regex Inline();

    /// <summary>
    /// The HTML page for <paramref name="markdown"/>. <paramref name="svg"/> returns the SVG document for an
    /// image's file name (null if unknown: the image is then shown as its alt text, marked missing).
    /// </summary>
    public static string Page(string title, string markdown, Func<string, string?> svg)
    {
        var html = new StringBuilder();
        html.AppendLine("<!DOCTYPE html>");
        html.AppendLine("<html lang=\"en\"><head><meta charset=\"utf-8\">");
        html.AppendLine($"<title>{WebUtility.HtmlEncode(title)}</title>");
        html.AppendLine("<style>");
        html.AppendLine("body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}");
        html.AppendLine("table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:0.3em 0.6em;text-align:left;vertical-align:top}th{background:#f3f3f3}");
        html.AppendLine("code{background:#f3f3f3;padding:0 0.2em;border-radius:3px}figure{margin:1.5em 0}figure svg{width:100%;height:auto;border:1px solid #eee}figcaption{margin-top:0.4em;color:#333}details{margin:1em 0}summary{cursor:pointer;color:#0969da}");
        html.AppendLine("strong.v-holds{color:#1a7f37}strong.v-partly{color:#9a6700}strong.v-does-not-hold{color:#cf222e}strong.v-not-measured{color:#57606a}");
        html.AppendLine(".missing{color:#cf222e}");
        html.AppendLine("</style></head><body>");
        Body(markdown, svg, html);

        // Marks, once the page has laid out, how many figures drew a non-empty picture, how many are narrower than
        // the text column, the smallest rendered text height in any figure, and the text boxes that overlap within
        // one figure (with the first such pair): a headless browser's DOM dump reads them; a reader sees nothing.
        html.AppendLine("<script>window.addEventListener('load',function(){var f=document.querySelectorAll('figure svg'),ok=0,narrow=0,small=1e9,overlaps=0,first='';"
            + "f.forEach(function(s,i){var b=s.getBBox();if(b.width>0&&b.height>0&&s.querySelectorAll('path,polyline,line,circle,rect').length>0)ok++;"
            + "if(s.getBoundingClientRect().width<0.95*s.parentNode.getBoundingClientRect().width)narrow++;"
            + "var t=Array.prototype.slice.call(s.querySelectorAll('text')).filter(function(e){return e.textContent.trim().length>0;}),r=t.map(function(e){return e.getBoundingClientRect();});"
            + "r.forEach(function(x){small=Math.min(small,x.height);});"
            + "for(var a=0;a<r.length;a++)for(var c=a+1;c<r.length;c++){var w=Math.min(r[a].right,r[c].right)-Math.max(r[a].left,r[c].left),h=Math.min(r[a].bottom,r[c].bottom)-Math.max(r[a].top,r[c].top);"
            + "if(w>1&&h>1){overlaps++;if(!first)first='figure '+(i+1)+': \u201c'+t[a].textContent+'\u201d / \u201c'+t[c].textContent+'\u201d';}}});"
            + "var d=document.body;d.setAttribute('data-figures',f.length);d.setAttribute('data-figures-rendered',ok);d.setAttribute('data-figures-narrow',narrow);"
            + "d.setAttribute('data-min-text-px',Math.round(small));d.setAttribute('data-text-overlaps',overlaps);d.setAttribute('data-first-overlap',first);});</script>");
        html.AppendLine("</body></html>");
        return html.ToString();
    }

    /// <summary>
    /// The anchor GitHub gives a heading: lower case, every character but letters, digits, spaces, '-' and '_'
    /// dropped, spaces as '-'; a repeated anchor gets "-1", "-2", ... So a report's contents links work both on
    /// GitHub's rendering of the markdown and in this page.
    /// </summary>
    public static string Slug(string heading, Dictionary<string, int>? seen = null)
    {
        string slug = new([.. heading.ToLowerInvariant().Where(c => char.IsLetterOrDigit(c) || c is ' ' or '-' or '_').Select(c => c == ' ' ? '-' : c)]);
        if (seen is null)
        {
            return slug;
        }

        int count = seen.GetValueOrDefault(slug);
        seen[slug] = count + 1;
        return count == 0 ? slug : $"{slug}-{count}";
    }

    private static void Body(string markdown, Func<string, string?> svg, StringBuilder html)
    {
        string[] lines = markdown.ReplaceLineEndings("\n").Split('\n');
        var anchors = new Dictionary<string, int>(StringComparer.Ordinal);
        var paragraph = new List<string>();
        string heading = string.Empty;
        void FlushParagraph()
        {
            if (paragraph.Count > 0)
            {
                html.AppendLine("<p>" + string.Join(" ", paragraph.Select(Inlines)) + "</p>");
                paragraph.Clear();
            }
        }

        for (int i = 0; i < lines.Length; i++)
        {
            string line = lines[i].TrimEnd();
            if (line.Length == 0)
            {
                FlushParagraph();
            }
            else if (line.StartsWith('#'))
            {
                FlushParagraph();
                int level = line.TakeWhile(c => c == '#').Count();
                string text = line[level..].Trim();
                heading = PlainText(text);
                level = Math.Clamp(level, 1, 6);
                html.AppendLine($"<h{level} id=\"{WebUtility.HtmlEncode(Slug(PlainText(text), anchors))}\">{Inlines(text)}</h{level}>");
            }
            else if (Image().Match(line) is { Success: true } image)
            {
                FlushParagraph();
                string src = image.Groups["src"].Value, alt = image.Groups["alt"].Value;
                string? document = svg(src);
                html.AppendLine(document is null
                    ? $"<p class=\"missing\">[missing figure: {WebUtility.HtmlEncode(alt)} ({WebUtility.HtmlEncode(src)})]</p>"
                    : $"<figure role=\"img\" aria-label=\"{WebUtility.HtmlEncode(alt)}\">{StripProlog(document)}<figcaption>{WebUtility.HtmlEncode(alt)}</figcaption></figure>");
            }
            else if (line.StartsWith('|'))
            {
                FlushParagraph();
                var rows = new List<string>();
                while (i < lines.Length && lines[i].TrimStart().StartsWith('|'))
                {
                    rows.Add(lines[i].Trim());
                    i++;
                }

                i--;
                // The "every point" tables (under a heading that starts "Every", or any of more than 25 rows) fold away.
                bool fold = heading.StartsWith("Every ", StringComparison.Ordinal) || rows.Count > 27;
                if (fold)
                {
                    html.AppendLine($"<details><summary>{WebUtility.HtmlEncode(heading.StartsWith("Every ", StringComparison.Ordinal) ? heading : "The table")}: {rows.Count - 2} {(rows.Count == 3 ? "row" : "rows")} (click to show)</summary>");
                }

                Table(rows, html);
                if (fold)
                {
                    html.AppendLine("</details>");
                }
            }
            else if (line.StartsWith("- ", StringComparison.Ordinal))
            {
                FlushParagraph();
                html.AppendLine("<ul>");
                while (i < lines.Length && lines[i].StartsWith("- ", StringComparison.Ordinal))
                {
                    html.AppendLine("<li>" + Inlines(lines[i][2..].Trim()) + "</li>");
                    i++;
                }

                i--;
                html.AppendLine("</ul>");
            }
            else
            {
                paragraph.Add(line);
            }
        }

        FlushParagraph();
    }

    private static void Table(List<string> rows, StringBuilder html)
    {
        List<string[]> cells = [.. rows.Select(Cells)];
        bool header = cells.Count > 1 && cells[1].All(c => c.Trim().Trim(':').All(ch => ch == '-') && c.Trim().Length > 0);
        html.AppendLine("<table>");
        for (int r = 0; r < cells.Count; r++)
        {
            if (header && r == 1)
            {
                continue;
            }

            string tag = header && r == 0 ? "th" : "td";
            html.AppendLine("<tr>" + string.Concat(cells[r].Select(c => $"<{tag}>{Inlines(c.Trim())}</{tag}>")) + "</tr>");
        }

        html.AppendLine("</table>");
    }

    /// <summary>The cells of a pipe-table row; <c>\|</c> is a literal bar.</summary>
    private static string[] Cells(string row)
    {
        string inner = row.Trim();
        inner = inner[1..];
        if (inner.EndsWith('|') && !inner.EndsWith("\\|", StringComparison.Ordinal))
        {
            inner = inner[..^1];
        }

        var cells = new List<string>();
        var cell = new StringBuilder();
        for (int i = 0; i < inner.Length; i++)
        {
            if (inner[i] == '\\' && i + 1 < inner.Length && inner[i + 1] == '|')
            {
                cell.Append('|');
                i++;
            }
            else if (inner[i] == '|')
            {
                cells.Add(cell.ToString());
                cell.Clear();
            }
            else
            {
                cell.Append(inner[i]);
            }
        }

        cells.Add(cell.ToString());
        return [.. cells];
    }

    /// <summary>Escapes text and applies the inline forms.</summary>
    private static string Inlines(string text)
    {
        var html = new StringBuilder();
        int at = 0;
        foreach (Match m in Inline().Matches(text))
        {
            html.Append(WebUtility.HtmlEncode(text[at..m.Index]));
            if (m.Groups["code"].Success)
            {
                html.Append("<code>").Append(WebUtility.HtmlEncode(m.Groups["code"].Value)).Append("</code>");
            }
            else if (m.Groups["bold"].Success)
            {
                string bold = m.Groups["bold"].Value;
                string verdict = bold is "holds" or "partly" or "does not hold" or "not measured" ? $" class=\"v-{bold.Replace(' ', '-')}\"" : string.Empty;
                html.Append($"<strong{verdict}>").Append(WebUtility.HtmlEncode(bold)).Append("</strong>");
            }
            else
            {
                string href = m.Groups["href"].Value;
                bool safe = href.StartsWith('#') || !href.Contains(':', StringComparison.Ordinal) || href.StartsWith("https:", StringComparison.Ordinal);
                html.Append(safe ? $"<a href=\"{WebUtility.HtmlEncode(href)}\">" : "<a>").Append(WebUtility.HtmlEncode(m.Groups["text"].Value)).Append("</a>");
            }

            at = m.Index + m.Length;
        }

        html.Append(WebUtility.HtmlEncode(text[at..]));
        return html.ToString();
    }

    /// <summary>A heading's text as GitHub slugs it: inline code and bold markers removed, link text kept.</summary>
    private static string PlainText(string markdown) => Inline().Replace(markdown, m =>
        m.Groups["code"].Success ? m.Groups["code"].Value : m.Groups["bold"].Success ? m.Groups["bold"].Value : m.Groups["text"].Value);

    private static string StripProlog(string svg)
    {
        int start = svg.IndexOf("<svg", StringComparison.Ordinal);
        return start > 0 ? svg[start..] : svg;
    }
}
