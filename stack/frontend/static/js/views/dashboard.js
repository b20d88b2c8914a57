// The dashboard: profile, plan, usage this month, and the chat panel.
import { markLoggedOut, request, ServiceUnreachable, SessionExpired, tokens } from "../api.js";
import { ChatPanel, describeHttpFailure } from "../chat.js";
import { clear, h, setTitle } from "../dom.js";
import { appState, resetState } from "../state.js";

/** The error banner: one line per failing thing, keyed so that each clears when it recovers. */
class ErrorBanner {
  constructor() {
    this.items = new Map();
    this.list = h("ul", { class: "banner-list" });
    this.element = h(
      "div",
      { role: "alert", class: "banner banner-error", "data-testid": "error-banner", hidden: true },
      h("span", { class: "banner-icon", "aria-hidden": "true", text: "!" }),
      this.list,
      h("button", { type: "button", class: "btn btn-ghost btn-small", text: "Dismiss", onclick: () => this.clearAll() }),
    );
  }

  set(key, message, code) {
    this.items.set(key, { message, code });
    this.render();
  }

  clear(key) {
    if (this.items.delete(key)) this.render();
  }

  clearAll() {
    this.items.clear();
    this.render();
  }

  render() {
    clear(this.list);
    for (const [key, { message, code }] of this.items) {
      this.list.append(h("li", { "data-key": key, "data-code": code || null, text: message }));
    }
    this.element.hidden = this.items.size === 0;
  }
}

function monthRange(now = new Date()) {
  const start = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1));
  const end = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1));
  const iso = (d) => d.toISOString().replace(".000Z", "Z");
  return { from: iso(start), to: iso(end) };
}

function formatUsd(value) {
  if (value === undefined || value === null || value === "") return "$0.00";
  const [whole, frac = ""] = String(value).split(".");
  const trimmed = frac.replace(/0+$/, "");
  return `$${whole}.${trimmed.padEnd(2, "0")}`;
}

function formatInt(value) {
  const n = Number(value || 0);
  return Number.isFinite(n) ? n.toLocaleString("en-US") : String(value);
}

export function renderDashboard(root, { navigate, setHeader }) {
  if (!tokens.present) {
    navigate("/login", { replace: true });
    return () => {};
  }
  setTitle("Dashboard");
  const banner = new ErrorBanner();
  const heading = h("h1", { id: "dashboard-heading", text: "Loading your dashboard…" });
  const subtitle = h("p", { class: "muted", text: "Your account, your usage and your assistants in one place." });

  const profileName = h("dd", { "data-testid": "profile-name", text: "—" });
  const profileEmail = h("dd", { "data-testid": "profile-email", text: "—" });
  const planBadge = h("span", { class: "badge", "data-testid": "plan-badge", text: "…" });
  const profileCard = h(
    "section",
    { class: "card", "aria-labelledby": "profile-heading" },
    h("h2", { id: "profile-heading", text: "Profile" }),
    h(
      "dl",
      { class: "props" },
      h("div", {}, h("dt", { text: "Name" }), profileName),
      h("div", {}, h("dt", { text: "Email" }), profileEmail),
      h("div", {}, h("dt", { text: "Plan" }), h("dd", {}, planBadge)),
    ),
  );

  const usageTokens = h("dd", { class: "stat-value", "data-testid": "usage-tokens", text: "—" });
  const usageCost = h("dd", { class: "stat-value", "data-testid": "usage-cost", text: "—" });
  const usageDetail = h("p", { class: "muted small", "data-testid": "usage-detail" });
  const usageCard = h(
    "section",
    { class: "card", "aria-labelledby": "usage-heading", "aria-busy": "true" },
    h("h2", { id: "usage-heading", text: "Usage this month" }),
    h(
      "dl",
      { class: "stats" },
      h("div", { class: "stat" }, h("dt", { text: "Tokens" }), usageTokens),
      h("div", { class: "stat" }, h("dt", { text: "Cost" }), usageCost),
    ),
    usageDetail,
  );

  let stopped = false;
  const chat = new ChatPanel({
    banner,
    onTurnCompleted: () => loadUsage(),
    onConnected: () => {
      if (!appState.user) loadProfile();
      loadUsage();
    },
  });

  const logoutButton = h("button", { type: "button", class: "btn btn-ghost btn-small", text: "Log out", onclick: () => logout() });
  const userChip = h("span", { class: "user-chip", "aria-hidden": "true" });
  setHeader(h("div", { class: "header-actions" }, userChip, logoutButton));

  root.append(
    h(
      "div",
      { class: "dashboard" },
      h("div", { class: "page-head" }, heading, subtitle),
      banner.element,
      h(
        "div",
        { class: "dashboard-grid" },
        h("div", { class: "sidebar" }, profileCard, usageCard),
        chat.element,
      ),
    ),
  );

  let profileLoading = null;
  function loadProfile() {
    // one request at a time: the initial load and the socket's first connect both ask for it
    profileLoading = profileLoading || fetchProfile().finally(() => (profileLoading = null));
    return profileLoading;
  }

  async function fetchProfile() {
    try {
      const res = await request("backend", "/api/me");
      if (stopped) return;
      if (!res.ok) {
        banner.set("http:profile", describeHttpFailure(res, "profile"));
        return;
      }
      banner.clear("http:profile");
      const p = res.data || {};
      appState.user = { id: p.user_id ?? p.id, email: p.email, full_name: p.full_name, plan: p.plan };
      const name = p.full_name || p.email;
      heading.textContent = `Welcome, ${name}`;
      setTitle(name);
      profileName.textContent = p.full_name || "—";
      profileEmail.textContent = p.email || "—";
      const plan = p.plan || "free";
      planBadge.textContent = `${plan.charAt(0).toUpperCase()}${plan.slice(1)} plan`;
      planBadge.dataset.plan = plan;
      planBadge.className = `badge badge-plan badge-${plan.replace(/[^a-z0-9_-]/gi, "")}`;
      userChip.textContent = name;
    } catch (err) {
      if (err instanceof SessionExpired || stopped) return;
      if (err instanceof ServiceUnreachable) banner.set("http:profile", "The chat service is unreachable — your profile could not be loaded.");
      else throw err;
    }
  }

  async function loadUsage() {
    try {
      const res = await request("backend", "/api/usage", { query: monthRange() });
      if (stopped) return;
      usageCard.removeAttribute("aria-busy");
      if (!res.ok) {
        usageTokens.textContent = "—";
        usageCost.textContent = "—";
        usageDetail.textContent = "Usage is unavailable right now.";
        if (res.status !== 429) banner.set("http:usage", describeHttpFailure(res, "usage"));
        return;
      }
      banner.clear("http:usage");
      const u = res.data || {};
      const prompt = Number(u.prompt_tokens ?? 0);
      const completion = Number(u.completion_tokens ?? 0);
      const total = u.total_tokens ?? u.tokens ?? prompt + completion;
      const cost = u.cost_usd ?? u.total_usd ?? u.cost ?? "0";
      usageTokens.textContent = formatInt(total);
      usageTokens.dataset.value = String(total);
      usageCost.textContent = formatUsd(cost);
      usageCost.dataset.value = String(cost);
      usageDetail.textContent = `${formatInt(prompt)} prompt · ${formatInt(completion)} completion tokens`;
    } catch (err) {
      if (err instanceof SessionExpired || stopped) return;
      if (err instanceof ServiceUnreachable) {
        usageDetail.textContent = "Usage is unavailable right now.";
        banner.set("http:usage", "The chat service is unreachable — your usage could not be loaded.");
      } else throw err;
    }
  }

  async function logout() {
    logoutButton.disabled = true;
    const refresh = tokens.refresh;
    // Stop the socket and silence 401 handling first: the revocation below makes every request
    // still in flight fail with 401, which is the logout itself, not an expired session.
    markLoggedOut();
    stopped = true;
    chat.destroy();
    try {
      await request("auth", "/auth/logout", { method: "POST", body: refresh ? { refresh_token: refresh } : {} });
    } catch {
      // Logging out locally must work even when the auth service is down.
    }
    tokens.clear();
    resetState();
    navigate("/login?logged_out=1");
  }

  loadProfile();
  loadUsage();
  chat.start();

  return () => {
    stopped = true;
    chat.destroy();
    setHeader(null);
  };
}
