// Live lease countdowns: every <time class="countdown" datetime="ISO"> shows the time
// left, and turns into a warning in the last 15 minutes.
(function () {
  const WARN_MS = 15 * 60 * 1000;
  function fmt(ms) {
    if (ms <= 0) return "expired";
    const s = Math.floor(ms / 1000), d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600),
      m = Math.floor(s % 3600 / 60), sec = s % 60;
    if (d) return `${d}d ${h}h left`;
    if (h) return `${h}h ${String(m).padStart(2, "0")}m left`;
    return `${m}m ${String(sec).padStart(2, "0")}s left`;
  }
  function tick() {
    document.querySelectorAll("time.countdown").forEach((el) => {
      const left = new Date(el.getAttribute("datetime")) - Date.now();
      el.textContent = fmt(left);
      el.classList.toggle("expiring", left < WARN_MS);
    });
  }
  document.addEventListener("DOMContentLoaded", () => { tick(); setInterval(tick, 1000); });
  document.addEventListener("htmx:afterSwap", tick);
})();
