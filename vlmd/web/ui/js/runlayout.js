// The markup of the run page's widgets, shared by run.html and replay.html.

export const RUN_LAYOUT = `
<section id="run-head" class="card">
  <div class="head-line">
    <h1 id="run-title">…</h1> <span class="status"></span> <span class="reason"></span>
    <span class="sub" id="event-count"></span>
  </div>
  <div class="sub"><span class="model"></span> on <span class="dataset"></span></div>
  <div class="phase"></div>
  <div class="sub shards"></div>
  <div class="progress-wrap"></div>
  <dl class="figures">
    <div><dt>items/s</dt><dd class="rate">—</dd></div>
    <div><dt>ETA</dt><dd class="eta">—</dd></div>
    <div><dt>accuracy</dt><dd class="accuracy">—</dd></div>
    <div class="circular-figure" hidden><dt title="CircularEval: a question counts only when every rotation of it is right">circular accuracy</dt>
      <dd class="circular-accuracy">—</dd></div>
    <div><dt>alerts</dt><dd class="alerts">0</dd></div>
    <div><dt>J / correct</dt><dd class="joules">—</dd></div>
    <div><dt>KV peak</dt><dd class="kv-peak">—</dd></div>
  </dl>
  <div id="failures" hidden><h3>Item errors</h3><ol class="failures-list"></ol></div>
  <ul id="notes" class="sub notes"></ul>
  <div class="links"><a id="csv-link" href="#">answers.csv</a>
    <a id="datasette-link" href="#" hidden>events in Datasette</a>
    <a id="other-link" href="#"></a></div>
</section>
<section id="categories" class="card" hidden>
  <div class="category-head"><h2>Accuracy by category</h2>
    <select class="category-level" hidden><option value="category">category</option>
      <option value="l2_category">L2 category</option></select>
    <span class="sub">sort by</span><button data-sort="name">name</button>
    <button data-sort="accuracy">accuracy</button><button data-sort="items">items</button></div>
  <p class="sub category-note"></p>
  <ol class="category-bars"></ol>
</section>
<section class="charts">
  <p id="no-gpu" class="empty" hidden>No GPU on this host: the agents' samples name none, so
    there is no GPU memory or utilisation to draw (and no VRAM measured per item).</p>
  <figure class="gpu-chart"><figcaption>GPU memory used, per device, and the wrapper's own (dashed)</figcaption>
    <div id="chart-memory" class="chart"></div></figure>
  <figure class="gpu-chart"><figcaption>GPU utilisation</figcaption><div id="chart-util" class="chart"></div></figure>
  <figure><figcaption>RAM: wrapper RSS and host used</figcaption><div id="chart-ram" class="chart"></div></figure>
  <figure id="server-figure" hidden><figcaption>Serving engine (its /metrics): KV-cache usage (%),
    requests running and waiting</figcaption><div id="chart-server" class="chart"></div></figure>
</section>
<section class="hists">
  <figure><figcaption>TTFT</figcaption><div id="hist-ttft" class="hist"></div></figure>
  <figure><figcaption>TPOT</figcaption><div id="hist-tpot" class="hist"></div></figure>
  <figure><figcaption>Peak VRAM delta</figcaption><div id="hist-vram" class="hist"></div></figure>
</section>
<section>
  <h2>Alerts</h2>
  <p id="no-alerts" class="empty">No alerts.</p>
  <ol id="alerts" class="alerts-list" data-count="0"></ol>
</section>
<section>
  <h2>Answers</h2>
  <div class="table-controls">
    <label>show <select id="answer-filter">
      <option value="all">all</option><option value="correct">correct (score ≥ 0.5)</option>
      <option value="wrong">wrong</option><option value="failed">failed</option>
      <option value="unscored">unscored</option></select></label>
    <button id="answers-prev">‹ prev</button><span id="answers-page"></span>
    <button id="answers-next">next ›</button>
  </div>
  <div class="scroll"><table id="answers-table" class="grid" data-rows="0">
    <thead><tr></tr></thead><tbody></tbody></table></div>
</section>`;
