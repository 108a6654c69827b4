//! Self-contained HTML reports: one file, no network, no external assets.
//! The data is embedded as JSON and rendered by a small inline script; the
//! per-case table filters and pages in memory, so 20,000 cases stay fast.

use serde_json::{json, Value};
use tunegate_run::compare::Comparison;
use tunegate_run::RunSummary;
use tunegate_store::Store;

const STYLE: &str = r##"
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:18px}header p{margin:4px 0 0;color:#b9c0cf;font-size:12px}
main{padding:16px 24px;max-width:1400px}section{background:#fff;border:1px solid #e2e5ea;border-radius:8px;padding:14px 18px;margin:0 0 16px}
h2{font-size:15px;margin:0 0 10px}table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eef0f3;vertical-align:top}
th{font-weight:600;color:#4a5264;font-size:12px;text-transform:uppercase;letter-spacing:.03em}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#17803d}.fail{color:#c0262d}.err{color:#a15c00}.muted{color:#6b7385}.verdict{font-size:16px;font-weight:600;margin:4px 0 8px}
.better{color:#17803d}.worse{color:#c0262d}.same{color:#4a5264}.controls{display:flex;gap:8px;flex-wrap:wrap;margin-bottom:8px}
input,select,button{font:inherit;padding:4px 8px;border:1px solid #cfd4dc;border-radius:5px;background:#fff}
td.text{max-width:420px;white-space:pre-wrap;word-break:break-word}.cm td{text-align:center;min-width:48px}.pager{margin-top:8px;display:flex;gap:8px;align-items:center}
"##;

const SCRIPT: &str = r##"
const D = JSON.parse(document.getElementById('data').textContent);
const $ = s => document.querySelector(s);
const esc = s => String(s ?? '').replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
const pct = x => (100*x).toFixed(1) + '%';
function bar(g){ const W=220, x=v=>Math.max(0,Math.min(W,v*W));
  return `<svg width="${W}" height="16" role="img" aria-label="pass rate ${pct(g.pass_rate)}"><rect x="0" y="4" width="${W}" height="8" fill="#eef0f3"/>`+
  `<rect x="0" y="4" width="${x(g.pass_rate)}" height="8" fill="#3d7be0"/>`+
  `<line x1="${x(g.ci95[0])}" x2="${x(g.ci95[1])}" y1="8" y2="8" stroke="#1d2330" stroke-width="2"/>`+
  `<line x1="${x(g.ci95[0])}" x2="${x(g.ci95[0])}" y1="3" y2="13" stroke="#1d2330"/><line x1="${x(g.ci95[1])}" x2="${x(g.ci95[1])}" y1="3" y2="13" stroke="#1d2330"/></svg>`; }
function leaderboard(){ if(!D.groups.length){ $('#leaderboard').remove(); return; }
  const rows = [...D.groups].sort((a,b)=>b.pass_rate-a.pass_rate).map(g=>`<tr><td>${esc(g.prompt)}</td><td>${esc(g.provider)}</td><td>${bar(g)}</td>`+
   `<td class="num">${pct(g.pass_rate)}</td><td class="num">${pct(g.ci95[0])}–${pct(g.ci95[1])}</td><td class="num">${g.passed}/${g.passed+g.failed}</td>`+
   `<td class="num">${g.errors}</td><td class="num">${g.mean_score.toFixed(3)}</td><td class="num">${g.prompt_tokens_mean.toFixed(0)}/${g.completion_tokens_mean.toFixed(0)}</td>`+
   `<td class="num">${g.cost_usd==null?'n/a':'$'+g.cost_usd.toFixed(4)}</td><td class="num">${g.latency_p50_ms.toFixed(0)}/${g.latency_p95_ms.toFixed(0)}</td></tr>`).join('');
  $('#lb').innerHTML = `<tr><th>prompt</th><th>provider</th><th>pass rate, 95% CI</th><th>pass</th><th>95% CI (Wilson)</th><th>passed</th><th>errors</th><th>score</th><th>tokens in/out</th><th>cost</th><th>p50/p95 ms</th></tr>`+rows; }
function confusion(){ const gs = D.groups.filter(g=>g.classification); if(!gs.length){ $('#confusion').remove(); return; }
  const sel = $('#cmgroup'); sel.innerHTML = gs.map((g,i)=>`<option value="${i}">${esc(g.prompt)}@${esc(g.provider)}</option>`).join('');
  const best = gs.reduce((b,g,i)=>g.pass_rate>gs[b].pass_rate?i:b,0); sel.value = best;
  const draw = () => { const c = gs[+sel.value].classification; const labels = Object.keys(c.per_label); const cols = [...labels];
    if (c.outside_label_set>0) cols.push('(other)'); let max = 1; for (const r of Object.values(c.confusion)) for (const v of Object.values(r)) max = Math.max(max, v);
    let h = `<tr><th>expected \\ predicted</th>${cols.map(l=>`<th>${esc(l)}</th>`).join('')}<th>recall</th><th>precision</th><th>F1</th></tr>`;
    for (const e of labels){ const r = c.confusion[e]||{}; h += `<tr><th>${esc(e)}</th>`+cols.map(p=>{ const v=r[p]||0; const a=(v/max).toFixed(2);
      return `<td style="background:rgba(${p===e?'23,128,61':'192,38,45'},${a*0.6})">${v}</td>`;}).join('')+
      `<td class="num">${c.per_label[e].recall.toFixed(2)}</td><td class="num">${c.per_label[e].precision.toFixed(2)}</td><td class="num">${c.per_label[e].f1.toFixed(2)}</td></tr>`; }
    $('#cm').innerHTML = h; $('#cmsum').textContent = `accuracy ${pct(c.accuracy)} · macro-F1 ${c.macro_f1.toFixed(3)} · outside the label set ${c.outside_label_set}`; };
  sel.onchange = draw; draw(); }
function diffbar(iv){ const W=300, lo=-1, hi=1, x=v=>(v-lo)/(hi-lo)*W;
  return `<svg width="${W}" height="22"><line x1="${x(0)}" x2="${x(0)}" y1="0" y2="22" stroke="#9aa1af" stroke-dasharray="3 2"/>`+
   `<line x1="${x(iv.low)}" x2="${x(iv.high)}" y1="11" y2="11" stroke="#1d2330" stroke-width="3"/><circle cx="${x(iv.estimate)}" cy="11" r="5" fill="#3d7be0"/></svg>`; }
function beforeAfter(){ if(!D.comparisons.length){ $('#beforeafter').remove(); return; }
  $('#ba').innerHTML = D.comparisons.map(c=>{ const cls = c.better===true?'better':c.better===false?'worse':'same';
    const b = c.bootstrap.pass_rate_diff;
    return `<div style="margin-bottom:14px"><div class="muted">A (before): ${esc(label(c.a))} → B (after): ${esc(label(c.b))}</div>`+
     `<div class="verdict ${cls}">${esc(c.verdict)}</div>`+
     `<div>Pass rate ${pct(c.pass_rate_a)} → ${pct(c.pass_rate_b)} · difference ${(100*b.estimate).toFixed(1)} pts, 95% CI ${(100*b.low).toFixed(1)} to ${(100*b.high).toFixed(1)} (paired bootstrap, ${c.bootstrap.resamples} resamples)</div>`+
     `<div>${diffbar(b)} <span class="muted">−100 … 0 … +100 pts</span></div>`+
     `<div>McNemar exact: ${c.mcnemar.improvements} improvements, ${c.mcnemar.regressions} regressions among ${c.paired} paired cases, p = ${c.mcnemar.p_value.toPrecision(3)}</div>`+
     (c.power_note?`<div class="muted">${esc(c.power_note)}</div>`:'')+
     ((c.only_in_a.length||c.only_in_b.length)?`<div class="muted">Not paired: ${c.only_in_a.length} only in A, ${c.only_in_b.length} only in B</div>`:'')+
     `<details><summary>${c.regressions.length} regressions, ${c.improvements.length} improvements</summary><table><tr><th>case</th><th>input</th><th>expected</th><th>A</th><th>B</th></tr>`+
     [...c.regressions.map(d=>[d,'fail']),...c.improvements.map(d=>[d,'pass'])].map(([d,k])=>`<tr class="${k}"><td>${esc(d.case_id)}</td><td class="text">${esc(d.input)}</td><td>${esc(d.expected)}</td><td class="text">${esc(d.output_a)}</td><td class="text">${esc(d.output_b)}</td></tr>`).join('')+
     `</table></details></div>`; }).join(''); }
function label(s){ return s.prompt ? `${s.run_id}:${s.prompt}@${s.provider}` : s.run_id; }
let page = 0; const PAGE = 200; let shown = [];
function cases(){ if(!D.cases.length){ $('#cases').remove(); return; }
  const gsel = $('#cgroup'); const groups = [...new Set(D.cases.map(c=>c[0]+'@'+c[1]))];
  gsel.innerHTML = '<option value="">all prompt × provider</option>'+groups.map(g=>`<option>${esc(g)}</option>`).join('');
  const apply = () => { const g = gsel.value, st = $('#cstatus').value, q = $('#csearch').value.toLowerCase();
    shown = D.cases.filter(c => (!g || c[0]+'@'+c[1]===g) && (st==='all' || (st==='fail' && c[4]===0) || (st==='pass' && c[4]===1) || (st==='error' && c[4]===null) || (st==='notpass' && c[4]!==1))
      && (!q || (c[2]+' '+c[5]+' '+c[6]+' '+c[7]+' '+c[8]).toLowerCase().includes(q)));
    page = 0; render(); };
  let t; $('#csearch').oninput = () => { clearTimeout(t); t = setTimeout(apply, 150); }; gsel.onchange = apply; $('#cstatus').onchange = apply;
  $('#prev').onclick = () => { if(page>0){page--; render();} }; $('#next').onclick = () => { if((page+1)*PAGE<shown.length){page++; render();} };
  apply(); }
function render(){ const rows = shown.slice(page*PAGE,(page+1)*PAGE).map(c=>{ const k = c[4]===1?'pass':c[4]===0?'fail':'err';
   return `<tr><td class="${k}">${k==='err'?'ERROR':k.toUpperCase()}</td><td>${esc(c[0])}@${esc(c[1])}</td><td>${esc(c[2])}</td><td class="num">${c[3]}</td><td class="text">${esc(c[5])}</td><td class="text">${esc(c[6])}</td><td class="text">${esc(c[7])}</td><td class="text muted">${esc(c[8])}</td></tr>`; }).join('');
  $('#ct').innerHTML = '<tr><th></th><th>prompt@provider</th><th>case</th><th>line</th><th>input</th><th>expected</th><th>output</th><th>why</th></tr>' + rows;
  $('#pinfo').textContent = `${shown.length} cases · page ${shown.length?page+1:0} of ${Math.max(1,Math.ceil(shown.length/PAGE))}`; }
function advice(){ const a = D.advice; if(!a){ $('#advice').remove(); return; }
  const rows = a.table.map(r=>`<tr><td>${esc(r.row)}</td><td class="text">${esc(r.evidence)}</td><td>${esc(r.points_to)}</td><td>${esc(r.confidence)}</td></tr>`).join('');
  const steps = a.next_steps.map(s=>`<li>${esc(s.text)}${s.command?`<br><code>$ ${esc(s.command)}</code>`:''}</li>`).join('');
  $('#adv').innerHTML = `<div class="verdict">${esc(a.verdict)}</div><div>${esc(a.summary)}</div>`+
   (a.keep_prompt?`<div class="muted">Keep prompt <b>${esc(a.keep_prompt)}</b> on top of the tuned model.</div>`:'')+
   `<ul>${a.reasons.map(r=>`<li>${esc(r)}</li>`).join('')}</ul>`+
   `<table><tr><th>decision row</th><th>measured evidence</th><th>points to</th><th>confidence</th></tr>${rows}</table>`+
   `<h2 style="margin-top:12px">Next steps</h2><ol>${steps}</ol>`; }
advice(); leaderboard(); confusion(); beforeAfter(); cases();
"##;

/// Escapes embedded JSON so `</script>` inside data cannot end the tag.
fn embed(v: &Value) -> String {
    v.to_string().replace("</", "<\\/").replace("<!--", "<\\!--")
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub fn page(title: &str, subtitle: &str, data: &Value) -> String {
    format!(
        r##"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>{t}</title><style>{STYLE}</style></head><body>
<header><h1>{t}</h1><p>{s}</p></header><main>
<section id="advice"><h2>Advisor</h2><div id="adv"></div></section>
<section id="beforeafter"><h2>Before / after</h2><div id="ba"></div></section>
<section id="leaderboard"><h2>Leaderboard: prompt × provider</h2><table id="lb"></table><p class="muted">Bars: pass rate; whiskers: 95% Wilson interval. Provider errors are not counted as failures.</p></section>
<section id="confusion"><h2>Confusion matrix</h2><div class="controls"><select id="cmgroup"></select><span id="cmsum" class="muted"></span></div><table id="cm" class="cm"></table></section>
<section id="cases"><h2>Cases</h2><div class="controls"><select id="cgroup"></select><select id="cstatus"><option value="notpass">failures and errors</option><option value="all">all</option><option value="fail">failed</option><option value="pass">passed</option><option value="error">errors</option></select><input id="csearch" type="search" placeholder="search input, output, id…" size="30"></div>
<table id="ct"></table><div class="pager"><button id="prev">‹ prev</button><button id="next">next ›</button><span id="pinfo" class="muted"></span></div></section>
</main><script type="application/json" id="data">{d}</script><script>{SCRIPT}</script></body></html>
"##,
        t = xml(title),
        s = xml(subtitle),
        d = embed(data)
    )
}

fn reasons(r: &tunegate_store::ResultRow) -> String {
    if let Some(e) = &r.error {
        return e.clone();
    }
    r.assertions
        .as_array()
        .map(|a| a.iter().filter(|x| x["pass"] == json!(false)).filter_map(|x| x["reason"].as_str()).collect::<Vec<_>>().join("; "))
        .unwrap_or_default()
}

/// The eval report: leaderboard, confusion matrix, before/after (with a
/// baseline), and every case.
pub fn eval_report(store: &Store, s: &RunSummary, comparisons: &[Comparison]) -> anyhow::Result<String> {
    eval_report_with(store, s, &[], comparisons, None)
}

/// The eval report with the advisor's verdict, table and next steps on top.
/// `extra` runs (e.g. the tuned model's) join the leaderboard and the cases.
pub fn eval_report_with(store: &Store, s: &RunSummary, extra: &[RunSummary], comparisons: &[Comparison], advice: Option<&tunegate_core::advise::Advice>) -> anyhow::Result<String> {
    let mut cases = vec![];
    let mut groups = s.groups.clone();
    for run in std::iter::once(s).chain(extra) {
        store.for_each_result(&run.run_id, false, |r| {
            let pass = if r.error.is_some() { Value::Null } else { json!(if r.pass == Some(true) { 1 } else { 0 }) };
            cases.push(json!([r.prompt_id, r.provider, r.case_id, r.case_line, pass, r.input, r.expected.as_ref().map(tunegate_core::dataset::value_text), r.output, reasons(&r)]));
        })?;
    }
    for e in extra {
        groups.extend(e.groups.iter().cloned());
    }
    let data = json!({"groups": groups, "comparisons": comparisons, "cases": cases, "advice": advice});
    let sub = format!("run {} · task {} · {} · {} results ({} passed, {} failed, {} errors)", s.run_id, s.run.task_name, s.run.created_at, s.total, s.passed, s.failed, s.errors);
    Ok(page(&format!("tunegate: {}", s.run.task_name), &sub, &data))
}

/// The advisor's report alone.
pub fn advice_report(a: &tunegate_core::advise::Advice) -> String {
    let data = json!({"groups": [], "comparisons": [], "cases": [], "advice": a});
    page(&format!("tunegate advise: {}", a.task), &format!("verdict {}", a.verdict.as_str()), &data)
}

pub fn compare_report(comparisons: &[Comparison]) -> String {
    let data = json!({"groups": [], "comparisons": comparisons, "cases": []});
    let sub = comparisons.first().map(|c| format!("{} → {}", c.a.label(), c.b.label())).unwrap_or_default();
    page("tunegate: before / after", &sub, &data)
}
