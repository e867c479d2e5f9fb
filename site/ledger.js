// The claims ledger: filter by text, verdict and experiment; sort by any column. No library, no network.
(function () {
  const table = document.getElementById("ledger");
  if (!table) return;
  const rows = Array.from(table.tBodies[0].rows);
  const text = document.getElementById("ledger-text");
  const verdict = document.getElementById("ledger-verdict");
  const experiment = document.getElementById("ledger-experiment");
  const count = document.getElementById("ledger-count");
  function filter() {
    const needle = text.value.toLowerCase();
    let shown = 0;
    for (const row of rows) {
      const ok = (!needle || row.textContent.toLowerCase().includes(needle)) &&
        (!verdict.value || row.dataset.verdict === verdict.value) &&
        (!experiment.value || row.dataset.experiment === experiment.value);
      row.hidden = !ok;
      if (ok) shown += 1;
    }
    count.textContent = shown + " of " + rows.length + " claims";
  }
  [text, verdict, experiment].forEach((el) => el.addEventListener("input", filter));
  let sorted = { column: -1, ascending: true };
  table.tHead.querySelectorAll("th[data-sort]").forEach((th) => {
    th.addEventListener("click", () => {
      const column = Number(th.dataset.sort);
      sorted = { column, ascending: sorted.column === column ? !sorted.ascending : true };
      const key = (row) => row.cells[column].textContent.trim();
      rows.sort((a, b) => key(a).localeCompare(key(b), undefined, { numeric: true }) * (sorted.ascending ? 1 : -1));
      rows.forEach((row) => table.tBodies[0].appendChild(row));
    });
  });
  filter();
})();
