// The job list: each unfinished job's row follows its progress live (server-sent events).
const rows = new Map([...document.querySelectorAll("tr[data-job]")].map((row) => [row.dataset.job, row]));
const live = [...rows.values()].filter((row) => ["queued", "running"].includes(row.dataset.state));

if (live.length) {
  const source = new EventSource(`/jobs/stream?ids=${live.map((row) => row.dataset.job).join(",")}`);
  source.addEventListener("job", (message) => {
    const job = JSON.parse(message.data);
    const row = rows.get(job.id);
    if (!row) return;
    row.dataset.state = job.state;
    const badge = row.querySelector(".state");
    badge.textContent = job.state;
    badge.className = `state state-${job.state}`;
    const bar = row.querySelector("progress");
    bar.max = Math.max(job.steps_total, 1);
    bar.value = job.steps_done;
    row.querySelector(".step").textContent = `${job.steps_done}/${job.steps_total} ${job.current_step}`;
  });
  // The stream ends when every job it follows has ended; do not let EventSource reconnect then.
  source.addEventListener("error", () => {
    if (live.every((row) => !["queued", "running"].includes(row.dataset.state))) source.close();
  });
}
