// Router and bootstrap of the Throughline Chat single-page app.
import { onSessionExpired, tokens } from "./api.js";
import { clear, h, setTitle } from "./dom.js";
import { snapshot } from "./state.js";
import { completeOAuth, renderLogin, renderSignup } from "./views/auth.js";
import { renderDashboard } from "./views/dashboard.js";

const main = document.getElementById("main");
const headerSlot = document.getElementById("header-actions");

const routes = {
  "/signup": renderSignup,
  "/login": renderLogin,
  "/oauth/complete": completeOAuth,
  "/dashboard": renderDashboard,
};

let cleanup = null;

function setHeader(node) {
  clear(headerSlot);
  if (node) headerSlot.append(node);
}

export function navigate(path, { replace = false } = {}) {
  if (replace) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  render();
}

function notFound(root) {
  setTitle("Page not found");
  root.append(
    h(
      "div",
      { class: "auth-layout" },
      h(
        "section",
        { class: "card auth-card" },
        h("h1", { text: "Page not found" }),
        h("p", {}, h("a", { href: "/", "data-link": true, text: "Go to Throughline Chat" })),
      ),
    ),
  );
  return () => {};
}

function render() {
  if (cleanup) {
    const done = cleanup;
    cleanup = null;
    done();
  }
  clear(main);
  const path = location.pathname.replace(/\/+$/, "") || "/";
  if (path === "/") {
    navigate(tokens.present ? "/dashboard" : "/login", { replace: true });
    return;
  }
  const view = routes[path] || notFound;
  document.body.dataset.route = path;
  cleanup = view(main, { navigate, setHeader }) || null;
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-link]");
  if (!link || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
  event.preventDefault();
  navigate(link.getAttribute("href"));
});
window.addEventListener("popstate", render);

onSessionExpired(() => navigate("/login?error=session_expired", { replace: true }));

// What end-to-end tests may read: the user, the active thread and the connection. Never tokens.
Object.defineProperty(window, "__throughline", {
  value: Object.freeze({ state: snapshot }),
  configurable: false,
  writable: false,
});

render();
