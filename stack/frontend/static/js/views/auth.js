// Signup, login and the OAuth completion screens.
import config from "/config.js";
import { errorCode, errorMessage, fieldErrors, request, retryAfterSeconds, ServiceUnreachable, tokens } from "../api.js";
import { h, show, setTitle } from "../dom.js";

export const LOGIN_ERRORS = Object.freeze({
  oauth_state: `We couldn't verify that sign-in with ${config.oidcProviderName} (the request expired or didn't match). Please try again.`,
  oauth_denied: `Sign-in with ${config.oidcProviderName} was cancelled. You can try again or log in with your email.`,
  oauth_failed: `Sign-in with ${config.oidcProviderName} failed. Please try again in a moment.`,
  invalid_verification: "This verification link is invalid or has expired. Log in to get a new one, or sign up again.",
  session_expired: "Your session has expired. Please log in again.",
});
const UNKNOWN_LOGIN_ERROR = "Something went wrong while signing you in. Please try again.";

function field({ id, label, name, type = "text", autocomplete, hint }) {
  const errorId = `${id}-error`;
  const hintId = hint ? `${id}-hint` : null;
  const input = h("input", {
    id,
    name,
    type,
    autocomplete,
    "aria-describedby": [hintId, errorId].filter(Boolean).join(" "),
    required: true,
  });
  const error = h("p", { id: errorId, class: "field-error", hidden: true });
  const wrapper = h(
    "div",
    { class: "field" },
    h("label", { for: id, text: label }),
    input,
    hint ? h("p", { id: hintId, class: "field-hint", text: hint }) : null,
    error,
  );
  return {
    wrapper,
    input,
    setError(message) {
      show(error, message);
      if (message) input.setAttribute("aria-invalid", "true");
      else input.removeAttribute("aria-invalid");
    },
  };
}

function submitButton(label) {
  return h("button", { type: "submit", class: "btn btn-primary btn-block", text: label });
}

function busy(button, isBusy) {
  button.disabled = isBusy;
  button.setAttribute("aria-busy", String(isBusy));
}

function authShell(...children) {
  return h("div", { class: "auth-layout" }, h("section", { class: "card auth-card", "aria-labelledby": "auth-heading" }, ...children));
}

function link(href, text) {
  return h("a", { href, "data-link": true, text });
}

export function renderSignup(root) {
  setTitle("Create your account");
  const fields = {
    full_name: field({ id: "signup-name", label: "Full name", name: "full_name", autocomplete: "name" }),
    email: field({ id: "signup-email", label: "Email", name: "email", type: "email", autocomplete: "email" }),
    password: field({
      id: "signup-password",
      label: "Password",
      name: "password",
      type: "password",
      autocomplete: "new-password",
      hint: "At least 10 characters, with a letter and a digit.",
    }),
  };
  const alert = h("div", { role: "alert", class: "form-alert", hidden: true });
  const button = submitButton("Create account");
  const form = h(
    "form",
    { novalidate: true, "aria-labelledby": "auth-heading" },
    Object.values(fields).map((f) => f.wrapper),
    button,
  );
  const card = authShell(
    h("h1", { id: "auth-heading", text: "Create your account" }),
    h("p", { class: "muted", text: "Chat with assistants that know your usage and help you spend less." }),
    alert,
    form,
    h("p", { class: "auth-switch" }, "Already have an account? ", link("/login", "Log in")),
  );
  root.append(card);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    show(alert, null);
    for (const f of Object.values(fields)) f.setError(null);
    const values = {
      full_name: fields.full_name.input.value.trim(),
      email: fields.email.input.value.trim(),
      password: fields.password.input.value,
    };
    const missing = {
      full_name: values.full_name ? null : "Enter your full name.",
      email: values.email ? null : "Enter your email address.",
      password: values.password ? null : "Choose a password.",
    };
    if (Object.values(missing).some(Boolean)) {
      for (const [name, message] of Object.entries(missing)) fields[name].setError(message);
      fields[Object.keys(missing).find((k) => missing[k])].input.focus();
      show(alert, "Please fix the highlighted fields.");
      return;
    }
    busy(button, true);
    try {
      const res = await request("auth", "/auth/signup", { method: "POST", body: values, auth: false });
      if (res.ok) {
        showCheckEmail(card, values.email);
        return;
      }
      if (res.status === 409) {
        fields.email.setError("An account with this email already exists.");
        show(alert, "An account with this email already exists. Log in instead, or use another email.");
        fields.email.input.focus();
      } else if (res.status === 422) {
        const errors = fieldErrors(res);
        let first = null;
        for (const [name, message] of Object.entries(errors)) {
          if (fields[name]) {
            fields[name].setError(message);
            first = first || fields[name];
          }
        }
        const formLevel = errors._form || (!first ? errorMessage(res, "Please check the highlighted fields.") : null);
        show(alert, first ? "Please fix the highlighted fields." : formLevel);
        if (first) first.input.focus();
      } else if (res.status === 429) {
        const seconds = retryAfterSeconds(res);
        show(alert, seconds ? `Too many attempts. Try again in ${seconds} seconds.` : "Too many attempts. Try again in a moment.");
      } else {
        show(alert, `We couldn't create your account (${errorMessage(res, `HTTP ${res.status}`)}). Please try again.`);
      }
    } catch (err) {
      if (err instanceof ServiceUnreachable) show(alert, "The sign-up service is unreachable. Please try again in a moment.");
      else throw err;
    } finally {
      busy(button, false);
    }
  });
  fields.full_name.input.focus();
  return () => {};

  function showCheckEmail(container, email) {
    setTitle("Check your email");
    const section = container.querySelector(".auth-card");
    section.replaceChildren(
      h("div", { class: "auth-icon", "aria-hidden": "true", text: "✉" }),
      h("h1", { id: "auth-heading", tabindex: "-1", text: "Check your email" }),
      h(
        "p",
        { "data-testid": "check-email-message" },
        "We sent a verification link to ",
        h("strong", { "data-testid": "check-email-address", text: email }),
        ". Open it to activate your account, then log in.",
      ),
      h("p", { class: "auth-switch" }, link("/login", "Go to log in")),
    );
    section.querySelector("h1").focus();
  }
}

export function renderLogin(root, { navigate }) {
  setTitle("Log in");
  const params = new URLSearchParams(location.search);
  const fields = {
    email: field({ id: "login-email", label: "Email", name: "email", type: "email", autocomplete: "email" }),
    password: field({
      id: "login-password",
      label: "Password",
      name: "password",
      type: "password",
      autocomplete: "current-password",
    }),
  };
  const status = h("div", { role: "status", class: "form-notice", hidden: true });
  const alert = h("div", { role: "alert", class: "form-alert", hidden: true });
  if (params.get("verified") === "1") show(status, "Email verified. You can log in now.");
  else if (params.get("logged_out") === "1") show(status, "You have been logged out.");
  const code = params.get("error");
  if (code) {
    show(alert, LOGIN_ERRORS[code] || UNKNOWN_LOGIN_ERROR);
    alert.dataset.code = code;
  }
  if (params.get("email")) fields.email.input.value = params.get("email");

  const button = submitButton("Log in");
  const form = h("form", { novalidate: true, "aria-labelledby": "auth-heading" }, fields.email.wrapper, fields.password.wrapper, button);
  const oauth = h("button", {
    type: "button",
    class: "btn btn-secondary btn-block",
    text: `Continue with ${config.oidcProviderName}`,
    onclick: () => {
      oauth.disabled = true;
      location.assign(`${config.authUrl}/auth/oauth/${encodeURIComponent(config.oidcProvider)}/start`);
    },
  });
  root.append(
    authShell(
      h("h1", { id: "auth-heading", text: "Log in" }),
      h("p", { class: "muted", text: "Welcome back to Throughline Chat." }),
      status,
      alert,
      form,
      h("div", { class: "divider", role: "separator" }, h("span", { text: "or" })),
      oauth,
      h("p", { class: "auth-switch" }, "New to Throughline Chat? ", link("/signup", "Create an account")),
    ),
  );

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    show(alert, null);
    delete alert.dataset.code;
    show(status, null);
    fields.email.setError(null);
    fields.password.setError(null);
    const email = fields.email.input.value.trim();
    const password = fields.password.input.value;
    if (!email || !password) {
      if (!email) fields.email.setError("Enter your email address.");
      if (!password) fields.password.setError("Enter your password.");
      (email ? fields.password : fields.email).input.focus();
      return;
    }
    busy(button, true);
    try {
      const res = await request("auth", "/auth/login", { method: "POST", body: { email, password }, auth: false });
      if (res.ok && res.data && res.data.access_token) {
        tokens.store(res.data.access_token, res.data.refresh_token);
        navigate("/dashboard");
        return;
      }
      let message;
      if (res.status === 401) message = "Wrong email or password.";
      else if (res.status === 403) message = "Please verify your email first. Check your inbox for the verification link.";
      else if (res.status === 429) {
        const seconds = retryAfterSeconds(res);
        message = seconds ? `Too many attempts. Try again in ${seconds} seconds.` : "Too many attempts. Try again in a moment.";
        if (seconds) alert.dataset.retryAfter = String(seconds);
      } else if (res.status === 422) message = "Enter a valid email address and your password.";
      else message = `We couldn't log you in (${errorMessage(res, `HTTP ${res.status}`)}). Please try again.`;
      alert.dataset.code = errorCode(res) || String(res.status);
      show(alert, message);
      fields.password.input.select();
    } catch (err) {
      if (err instanceof ServiceUnreachable) show(alert, "The sign-in service is unreachable. Please try again in a moment.");
      else throw err;
    } finally {
      busy(button, false);
    }
  });
  fields.email.input.focus();
  return () => {};
}

export function completeOAuth(root, { navigate }) {
  setTitle("Signing you in");
  root.append(
    h("div", { class: "auth-layout" }, h("section", { class: "card auth-card", role: "status" }, h("h1", { text: "Signing you in…" }))),
  );
  const fragment = new URLSearchParams(location.hash.slice(1));
  // Drop the tokens from the address bar (and from history) before anything else happens.
  history.replaceState(null, "", location.pathname);
  const access = fragment.get("access_token");
  if (access) {
    tokens.store(access, fragment.get("refresh_token"));
    navigate("/dashboard", { replace: true });
  } else {
    const error = fragment.get("error") || "oauth_failed";
    navigate(`/login?error=${encodeURIComponent(error)}`, { replace: true });
  }
  return () => {};
}
