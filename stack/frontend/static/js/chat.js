// The chat panel: threads, messages, streaming replies, tool activity, connection status.
import { newRequestId, request, ServiceUnreachable, SessionExpired, STORAGE } from "./api.js";
import { ChatConnection } from "./connection.js";
import { clear, h, show } from "./dom.js";
import { appState } from "./state.js";

const STATUS_TEXT = {
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting…",
  offline: "Offline",
};

export const FRAME_ERRORS = Object.freeze({
  llm_unavailable: "The assistant is unavailable right now. Please try again in a moment.",
  store_unavailable: "Storage is unavailable — your message could not be saved. Please try again shortly.",
  thread_not_found: "That conversation could not be found. It may have been deleted.",
  bad_frame: "The chat service could not understand that message.",
  internal: "Something went wrong in the chat service. Please try again.",
});
const CHAT_UNREACHABLE = "Chat service unreachable — reconnecting…";
const LOST_CONNECTION = "Not answered — the connection was lost. Send it again.";

export function agentLabel(agent) {
  return `${agent || "assistant"} agent`;
}

/** The chat panel; `banner` is the dashboard's error banner, `onTurnCompleted` refreshes usage. */
export class ChatPanel {
  constructor({ banner, onTurnCompleted, onConnected }) {
    this.banner = banner;
    this.onTurnCompleted = onTurnCompleted;
    this.onConnected = onConnected;
    this.threads = [];
    this.runs = new Map(); // run_id -> assistant message view (or null when on another thread)
    this.pendingByRequest = new Map(); // request_id -> user message element
    // A new chat's thread id is known from agent_started but the thread may only be stored when the
    // turn completes; messages typed meanwhile wait for it instead of naming an unknown thread.
    this.provisional = null; // {threadId, requestId}
    this.queue = []; // [{text, requestId, el}]
    // Messages whose turn a lost connection cut off: shown again, marked, after the reconnect restores
    // the conversation (which holds only completed turns), so that nothing vanishes silently.
    this.unanswered = []; // [{text, requestId, threadId}]
    this.rateTimer = null;
    this.loadSeq = 0;
    this.element = this.render();
    this.connection = new ChatConnection({
      onFrame: (frame) => this.handleFrame(frame),
      onStatus: (status, detail) => this.setConnectionStatus(status, detail),
    });
  }

  start() {
    this.connection.connect();
  }

  destroy() {
    clearTimeout(this.rateTimer);
    this.connection.stop();
  }

  // ---------------------------------------------------------------- markup

  render() {
    this.statusEl = h(
      "span",
      { role: "status", class: "conn", "data-testid": "connection-status", "data-state": "offline" },
      h("span", { class: "conn-dot", "aria-hidden": "true" }),
      h("span", { class: "conn-text", text: STATUS_TEXT.offline }),
    );
    this.threadList = h("ul", { class: "thread-list" });
    this.newChatButton = h("button", {
      type: "button",
      class: "btn btn-ghost btn-block new-chat",
      text: "New chat",
      onclick: () => this.newChat(),
    });
    this.messageList = h("ol", { class: "message-list" });
    this.emptyState = h(
      "div",
      { class: "empty-state" },
      h("p", { class: "empty-title", text: "Start a conversation" }),
      h("p", { class: "muted", text: "Ask about your usage this month, or how to make your prompts cheaper." }),
    );
    this.log = h(
      "div",
      { role: "log", "aria-live": "polite", "aria-label": "Messages", class: "messages", tabindex: "0" },
      this.emptyState,
      this.messageList,
    );
    this.activity = h("p", { role: "status", class: "activity", "data-testid": "tool-activity", hidden: true });
    this.rateNotice = h("div", { role: "status", class: "notice notice-warn", "data-testid": "rate-limit-notice", hidden: true });
    this.input = h("textarea", {
      id: "chat-message",
      name: "message",
      rows: "2",
      placeholder: "Ask anything — e.g. “How many tokens did I use?”",
    });
    this.sendButton = h("button", { type: "submit", class: "btn btn-primary", text: "Send", disabled: true });
    this.form = h(
      "form",
      { class: "composer", "aria-label": "Send a message" },
      h("label", { for: "chat-message", class: "sr-only", text: "Message" }),
      this.input,
      this.sendButton,
    );
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.sendCurrent();
    });
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.sendCurrent();
      }
    });
    return h(
      "section",
      { class: "card chat-panel", "aria-labelledby": "chat-heading", "data-testid": "chat-panel" },
      h("header", { class: "chat-header" }, h("h2", { id: "chat-heading", text: "Chat" }), this.statusEl),
      h(
        "div",
        { class: "chat-body" },
        h("nav", { class: "threads", "aria-label": "Threads" }, this.newChatButton, this.threadList),
        h("div", { class: "conversation" }, this.log, this.activity, this.rateNotice, this.form),
      ),
    );
  }

  setConnectionStatus(status, detail) {
    appState.connection = status;
    this.statusEl.dataset.state = status;
    this.statusEl.querySelector(".conn-text").textContent = STATUS_TEXT[status] || status;
    this.sendButton.disabled = status !== "connected";
    if (status !== "connected" && this.connection?.hasConnected) this.interruptInFlight();
    if (status === "connected") this.banner.clear("connection");
    else if (status === "reconnecting" && (this.connection?.hasConnected || detail.attempt > 1) && !detail.reason)
      this.banner.set("connection", CHAT_UNREACHABLE);
    else if (status === "offline" && !this.connection?.stopped)
      this.banner.set("connection", "You are offline — messages will be sent when the connection is back.");
  }

  // ---------------------------------------------------------------- threads

  async refreshThreads() {
    const res = await this.call("/api/threads", "threads");
    if (!res) return;
    const data = res.data;
    this.threads = Array.isArray(data) ? data : (data && (data.threads || data.items)) || [];
    this.renderThreads();
    if (this.provisional && this.threads.some((t) => t.id === this.provisional.threadId)) this.settleProvisional(true);
  }

  renderThreads() {
    clear(this.threadList);
    for (const thread of this.threads) {
      const isActive = thread.id === appState.activeThreadId;
      this.threadList.append(
        h(
          "li",
          {},
          h("button", {
            type: "button",
            class: "thread" + (isActive ? " is-active" : ""),
            "aria-current": isActive ? "true" : null,
            "data-thread-id": thread.id,
            text: thread.title || "Untitled conversation",
            title: thread.title || null,
            onclick: () => this.openThread(thread.id),
          }),
        ),
      );
    }
    if (!this.threads.length) this.threadList.append(h("li", { class: "thread-empty muted", text: "No conversations yet" }));
  }

  setActiveThread(id) {
    appState.activeThreadId = id || null;
    if (id) localStorage.setItem(STORAGE.activeThread, id);
    else localStorage.removeItem(STORAGE.activeThread);
    for (const button of this.threadList.querySelectorAll("button.thread")) {
      const isActive = button.dataset.threadId === id;
      button.classList.toggle("is-active", isActive);
      if (isActive) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
    }
  }

  newChat() {
    this.settleProvisional(false);
    this.setActiveThread(null);
    this.runs.clear();
    clear(this.messageList);
    this.emptyState.hidden = false;
    this.showActivity(null);
    this.input.focus();
  }

  async openThread(id) {
    if (this.provisional && this.provisional.threadId !== id) this.settleProvisional(false);
    this.setActiveThread(id);
    const seq = ++this.loadSeq;
    this.log.setAttribute("aria-busy", "true");
    const res = await this.call(`/api/threads/${encodeURIComponent(id)}/messages`, "messages", { allow404: true });
    if (seq !== this.loadSeq) return;
    this.log.removeAttribute("aria-busy");
    if (!res) return;
    if (res.status === 404) {
      this.setActiveThread(null);
      clear(this.messageList);
      this.emptyState.hidden = false;
      this.banner.set("thread", FRAME_ERRORS.thread_not_found);
      return;
    }
    this.banner.clear("thread");
    const data = res.data;
    const messages = Array.isArray(data) ? data : (data && (data.messages || data.items)) || [];
    this.runs.clear();
    clear(this.messageList);
    for (const m of messages) {
      if (m.role === "assistant") this.addAssistant({ agent: m.agent, text: m.content, status: "complete", id: m.id });
      else this.addUser(m.content, m.request_id, m.id);
    }
    this.pendingByRequest.clear(); // stored turns are complete: nothing listed here awaits a reply
    this.showUnanswered(id, new Set(messages.map((m) => m.request_id).filter(Boolean)));
    this.emptyState.hidden = this.messageList.children.length > 0;
    this.scrollToEnd();
  }

  /** Called on every connection_established: restore the conversation the user was in. */
  async restore(serverActiveThreadId) {
    const remembered = localStorage.getItem(STORAGE.activeThread);
    const id = serverActiveThreadId || appState.activeThreadId || remembered || null;
    await this.refreshThreads();
    if (id) await this.openThread(id);
    else {
      this.setActiveThread(null);
      this.showUnanswered(null, new Set()); // a new chat's first message, cut off before it was stored
    }
  }

  // ---------------------------------------------------------------- messages

  addUser(text, requestId, id) {
    const el = h(
      "li",
      { class: "msg msg-user", "data-testid": "message", "data-role": "user", "data-request-id": requestId, "data-message-id": id },
      h("div", { class: "msg-meta" }, h("span", { class: "msg-author", text: "You" })),
      h("div", { class: "msg-text", "data-testid": "message-text", text }),
    );
    this.messageList.append(el);
    this.emptyState.hidden = true;
    if (requestId) this.pendingByRequest.set(requestId, el);
    this.scrollToEnd();
    return el;
  }

  addAssistant({ agent, text = "", status = "streaming", runId, requestId, id }) {
    const badge = h("span", { class: "agent-badge", "data-testid": "agent-badge", "data-agent": agent || "", text: agentLabel(agent) });
    const body = h("div", { class: "msg-text", "data-testid": "message-text" });
    const tools = h("ul", { class: "msg-tools", "aria-label": "Tools used", hidden: true });
    const textNode = document.createTextNode(text || "");
    body.append(textNode);
    const el = h(
      "li",
      {
        class: "msg msg-assistant",
        "data-testid": "message",
        "data-role": "assistant",
        "data-agent": agent || "",
        "data-status": status,
        "data-run-id": runId,
        "data-request-id": requestId,
        "data-message-id": id,
        "data-chunks": "0",
        "aria-busy": status === "streaming" ? "true" : null,
      },
      h("div", { class: "msg-meta" }, h("span", { class: "msg-author", text: "Assistant" }), badge),
      tools,
      body,
    );
    this.messageList.append(el);
    this.emptyState.hidden = true;
    this.scrollToEnd();
    const view = {
      el,
      setAgent: (name) => {
        if (!name) return;
        el.dataset.agent = name;
        badge.dataset.agent = name;
        badge.textContent = agentLabel(name);
      },
      toolStarted: (tool) => {
        tools.hidden = false;
        tools.append(h("li", { class: "tool-use", "data-testid": "tool-use", "data-tool": tool, "data-state": "running", text: `Running ${tool}…` }));
      },
      toolDone: (tool) => {
        const item = [...tools.children].find((li) => li.dataset.tool === tool && li.dataset.state === "running");
        if (!item) return;
        item.dataset.state = "done";
        item.textContent = `Used ${tool}`;
      },
      append: (chunk) => {
        textNode.appendData(chunk);
        el.dataset.chunks = String(Number(el.dataset.chunks) + 1);
        this.scrollToEnd();
      },
      complete: (content, name) => {
        view.setAgent(name);
        if (typeof content === "string" && content) textNode.data = content;
        el.dataset.status = "complete";
        el.removeAttribute("aria-busy");
      },
      fail: (note) => {
        el.dataset.status = "failed";
        el.removeAttribute("aria-busy");
        body.append(h("span", { class: "msg-note", text: note }));
      },
    };
    return view;
  }

  /** The socket closed: replies still streaming are cut off and their messages go unanswered. */
  interruptInFlight() {
    for (const [runId, view] of this.runs) {
      if (view && view.el.dataset.status === "streaming") view.fail("The reply was interrupted.");
      this.runs.delete(runId);
    }
    for (const [requestId, el] of [...this.pendingByRequest]) {
      if (el.dataset.status !== "sent") continue; // queued ones are sent (or refused) later
      const text = el.querySelector('[data-testid="message-text"]')?.textContent || "";
      this.unanswered.push({ text, requestId, threadId: appState.activeThreadId });
      this.markUserFailed(requestId, LOST_CONNECTION);
    }
    this.showActivity(null);
  }

  /** After a restore: show again the cut-off messages of this conversation the server never stored. */
  showUnanswered(threadId, storedRequestIds) {
    const keep = [];
    for (const item of this.unanswered) {
      if (item.threadId && item.threadId !== threadId) keep.push(item);
      else if (!storedRequestIds.has(item.requestId)) {
        this.addUser(item.text, item.requestId);
        this.markUserFailed(item.requestId, LOST_CONNECTION);
      }
    }
    this.unanswered = keep;
  }

  markUserFailed(requestId, note) {
    const el = requestId && this.pendingByRequest.get(requestId);
    if (!el) return;
    this.pendingByRequest.delete(requestId);
    el.dataset.status = "failed";
    el.append(h("p", { class: "msg-note", text: note }));
  }

  scrollToEnd() {
    this.log.scrollTop = this.log.scrollHeight;
  }

  showActivity(text) {
    show(this.activity, text);
  }

  // ---------------------------------------------------------------- sending

  sendCurrent() {
    const text = this.input.value.trim();
    if (!text) return;
    if (this.send(text)) {
      this.input.value = "";
      this.input.focus();
    }
  }

  send(text) {
    if (!this.connection.isOpen) {
      this.banner.set("connection", CHAT_UNREACHABLE);
      return false;
    }
    const requestId = newRequestId();
    const el = this.addUser(text, requestId);
    if (this.provisional && this.provisional.threadId === appState.activeThreadId) {
      el.dataset.status = "queued";
      this.queue.push({ text, requestId, el });
      return true;
    }
    return this.transmit(text, requestId, el);
  }

  transmit(text, requestId, el) {
    const payload = { content: text };
    if (appState.activeThreadId) payload.thread_id = appState.activeThreadId;
    if (!this.connection.send({ type: "user_message", payload, request_id: requestId })) {
      this.banner.set("connection", CHAT_UNREACHABLE);
      this.markUserFailed(requestId, "Not sent — the chat service is unreachable.");
      return false;
    }
    el.dataset.status = "sent";
    return true;
  }

  /** The provisional thread is stored (`stored`) or will never be: send what waited for it. */
  settleProvisional(stored) {
    if (!this.provisional) return;
    const { threadId } = this.provisional;
    this.provisional = null;
    if (!stored && appState.activeThreadId === threadId) this.setActiveThread(null);
    const waiting = this.queue;
    this.queue = [];
    for (const item of waiting) {
      if (this.provisional && this.provisional.threadId === appState.activeThreadId) this.queue.push(item);
      else this.transmit(item.text, item.requestId, item.el);
    }
  }

  showRateLimit(seconds, scope) {
    const wait = Number.isFinite(Number(seconds)) && Number(seconds) > 0 ? Number(seconds) : null;
    const what = scope === "agent" ? "Too many replies are in progress." : "You're sending messages too fast.";
    const when = wait ? `Try again in ${wait} second${wait === 1 ? "" : "s"}.` : "Try again in a moment.";
    this.rateNotice.replaceChildren(h("strong", { text: "Rate limit reached. " }), `${what} ${when}`);
    this.rateNotice.dataset.retryAfter = wait ? String(wait) : "";
    this.rateNotice.dataset.scope = scope || "";
    this.rateNotice.hidden = false;
    clearTimeout(this.rateTimer);
    this.rateTimer = setTimeout(() => {
      this.rateNotice.hidden = true;
    }, (wait || 5) * 1000);
  }

  // ---------------------------------------------------------------- frames

  runView(payload, requestId) {
    const runId = payload.run_id;
    if (runId && this.runs.has(runId)) return this.runs.get(runId);
    const threadId = payload.thread_id;
    if (threadId && appState.activeThreadId && threadId !== appState.activeThreadId) {
      this.runs.set(runId, null); // a run of another thread: it shows when that thread is opened
      return null;
    }
    const view = this.addAssistant({ agent: payload.agent, runId, requestId });
    if (runId) this.runs.set(runId, view);
    return view;
  }

  handleFrame(frame) {
    const p = frame.payload || {};
    switch (frame.type) {
      case "connection_established":
        this.restore(p.active_thread_id);
        if (this.onConnected) this.onConnected();
        break;
      case "agent_started": {
        if (p.thread_id && !appState.activeThreadId) {
          this.setActiveThread(p.thread_id);
          if (!this.threads.some((t) => t.id === p.thread_id)) {
            this.provisional = { threadId: p.thread_id, requestId: frame.request_id };
            this.refreshThreads();
          }
        }
        const view = this.runView(p, frame.request_id);
        if (view) this.showActivity(`${agentLabel(p.agent)} is working…`);
        break;
      }
      case "agent_thinking":
        if (this.runs.get(p.run_id) !== null) this.showActivity(`${agentLabel(p.agent)} is thinking…`);
        break;
      case "tool_executing": {
        const view = this.runView(p, frame.request_id);
        if (view) {
          view.toolStarted(p.tool);
          this.showActivity(`Running ${p.tool}…`);
        }
        break;
      }
      case "tool_completed": {
        const view = this.runView(p, frame.request_id);
        if (view) {
          view.toolDone(p.tool);
          this.showActivity(`Finished ${p.tool}`);
        }
        break;
      }
      case "agent_stream": {
        const view = this.runView(p, frame.request_id);
        if (view) view.append(p.chunk || "");
        break;
      }
      case "agent_completed": {
        const view = this.runView(p, frame.request_id);
        if (view) view.complete(p.content, p.agent);
        this.pendingByRequest.delete(frame.request_id);
        if (this.provisional && this.provisional.threadId === p.thread_id) this.settleProvisional(true);
        this.showActivity(null);
        this.banner.clear("assistant");
        this.banner.clear("storage");
        if (this.onTurnCompleted) this.onTurnCompleted();
        this.refreshThreads();
        break;
      }
      case "error":
        this.handleErrorFrame(frame, p);
        break;
      case "rate_limited":
        this.showRateLimit(p.retry_after, p.scope);
        if (this.provisional && this.provisional.requestId === frame.request_id) this.settleProvisional(false);
        this.markUserFailed(frame.request_id, "Not sent — rate limited.");
        break;
      default:
        break; // pong and frames this version does not know
    }
  }

  handleErrorFrame(frame, p) {
    const code = p.code || "internal";
    const message = FRAME_ERRORS[code] || p.message || FRAME_ERRORS.internal;
    const key = code === "llm_unavailable" ? "assistant" : code === "store_unavailable" ? "storage" : "chat";
    this.banner.set(key, message, code);
    this.showActivity(null);
    for (const [runId, view] of this.runs) {
      if (view && view.el.dataset.status === "streaming" && (!frame.request_id || view.el.dataset.requestId === frame.request_id || !view.el.dataset.requestId)) {
        view.fail("The reply was interrupted.");
        this.runs.delete(runId);
      }
    }
    this.markUserFailed(frame.request_id, "No reply — this message was not answered.");
    // A new chat whose first turn failed was never stored: the next message starts it again.
    if (this.provisional && (!frame.request_id || this.provisional.requestId === frame.request_id)) this.settleProvisional(false);
    if (code === "thread_not_found") this.setActiveThread(null);
  }

  // ---------------------------------------------------------------- http

  /** GET on the backend; reports unreachable/storage failures in the banner and returns null. */
  async call(path, what, { allow404 = false } = {}) {
    try {
      const res = await request("backend", path);
      if (res.ok || (allow404 && res.status === 404)) {
        this.banner.clear(`http:${what}`);
        return res;
      }
      if (res.status === 429) this.showRateLimit(Number.parseInt(res.headers.get("Retry-After"), 10) || res.data?.retry_after, "http");
      else this.banner.set(`http:${what}`, describeHttpFailure(res, what));
      return null;
    } catch (err) {
      if (err instanceof SessionExpired) return null;
      if (err instanceof ServiceUnreachable) {
        this.banner.set(`http:${what}`, `The chat service is unreachable — your ${what} could not be loaded.`);
        return null;
      }
      throw err;
    }
  }
}

const STORES = { postgres: "database", postgresql: "database", redis: "session store", clickhouse: "analytics store" };

export function describeHttpFailure(res, what) {
  const d = res.data || {};
  const code = d.code || (typeof d.detail === "string" ? d.detail : d.detail?.code) || d.error;
  if (code === "auth_unavailable") return `The sign-in service is unavailable — your ${what} could not be loaded.`;
  if (code === "store_unavailable" || res.status === 503) {
    const store = STORES[d.store] || d.store;
    return `Storage is unavailable${store ? ` (${store})` : ""} — your ${what} could not be loaded.`;
  }
  return `Your ${what} could not be loaded (HTTP ${res.status}).`;
}
