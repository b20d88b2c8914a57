// The chat WebSocket: token in the subprotocol, reconnect with backoff, one refresh on 4401.
import config from "/config.js";
import { expireSession, refreshSession, tokens } from "./api.js";

const BACKOFF_START_MS = 250;
const BACKOFF_MAX_MS = 5000;
const KEEPALIVE_MS = 25000;
export const CLOSE_UNAUTHORIZED = 4401;

export class ChatConnection {
  /**
   * @param {{onFrame: (frame: object) => void, onStatus: (status: string, detail: object) => void}} handlers
   */
  constructor({ onFrame, onStatus }) {
    this.onFrame = onFrame;
    this.onStatus = onStatus;
    this.ws = null;
    this.attempt = 0;
    this.hasConnected = false;
    this.refreshTried = false;
    this.stopped = false;
    this.timer = null;
    this.keepalive = null;
    this.status = "offline";
    this.handleOnline = () => {
      if (this.stopped || this.isOpen) return;
      this.attempt = 0;
      clearTimeout(this.timer);
      this.connect();
    };
    this.handleOffline = () => {
      if (!this.isOpen) this.setStatus("offline");
    };
    window.addEventListener("online", this.handleOnline);
    window.addEventListener("offline", this.handleOffline);
  }

  get isOpen() {
    return this.status === "connected" && this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  setStatus(status, detail = {}) {
    this.status = status;
    this.onStatus(status, detail);
  }

  connect() {
    if (this.stopped) return;
    const token = tokens.access;
    if (!token) {
      expireSession();
      return;
    }
    this.setStatus(this.hasConnected || this.attempt > 0 ? "reconnecting" : "connecting");
    let ws;
    try {
      // The token travels in Sec-WebSocket-Protocol, never in the URL (URLs end up in logs).
      ws = new WebSocket(`${config.wsUrl}/ws`, [`jwt.${token}`]);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.addEventListener("message", (event) => {
      if (this.ws !== ws) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame.type === "connection_established") {
        this.attempt = 0;
        this.refreshTried = false;
        this.hasConnected = true;
        this.setStatus("connected");
        this.startKeepalive();
      }
      this.onFrame(frame);
    });
    ws.addEventListener("close", (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.stopKeepalive();
      if (this.stopped) return;
      if (event.code === CLOSE_UNAUTHORIZED) {
        this.handleUnauthorized();
        return;
      }
      this.scheduleReconnect(event.code);
    });
  }

  async handleUnauthorized() {
    if (this.refreshTried) {
      this.stop();
      expireSession();
      return;
    }
    this.refreshTried = true;
    this.setStatus("reconnecting", { reason: "refreshing session" });
    if (await refreshSession()) {
      if (!this.stopped) this.connect();
    } else {
      this.stop();
      expireSession();
    }
  }

  scheduleReconnect(code = null) {
    if (this.stopped) return;
    const delay = Math.min(BACKOFF_START_MS * 2 ** this.attempt, BACKOFF_MAX_MS);
    this.attempt += 1;
    this.setStatus(navigator.onLine === false ? "offline" : "reconnecting", { code, delay, attempt: this.attempt });
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  startKeepalive() {
    this.stopKeepalive();
    this.keepalive = setInterval(() => this.send({ type: "ping" }), KEEPALIVE_MS);
  }

  stopKeepalive() {
    clearInterval(this.keepalive);
    this.keepalive = null;
  }

  /** Send one frame; false when the socket is not open. */
  send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.stopKeepalive();
    window.removeEventListener("online", this.handleOnline);
    window.removeEventListener("offline", this.handleOffline);
    const ws = this.ws;
    this.ws = null;
    // Never abort a handshake (it loses the server's verdict, e.g. 4401, and logs an error): close once open.
    if (ws && ws.readyState === WebSocket.CONNECTING) ws.addEventListener("open", () => ws.close(1000, "client closed"));
    else if (ws && ws.readyState === WebSocket.OPEN) ws.close(1000, "client closed");
    this.setStatus("offline");
  }
}
