(() => {
  // The card reader: window.kibanCard = {certificate(): base64, sign(pin, challengeB64): base64}
  // (a test hook plugs the software card in; a real kiosk wires its IC card reader here).
  const TIMEOUT_MS = 60000;
  const headers = () => ({"Content-Type": "application/json", "X-Kiosk-Id": window.kioskId || "",
    "X-Kiosk-Credential": window.kioskCredential || "", "X-Kiosk-Interface-Version": window.kioskVersion || "2"});
  let session = null, challenge = null, timer = null;
  const show = (id) => { for (const s of document.querySelectorAll("#kiosk section")) s.hidden = s.id !== id; };
  const error = (text) => { const e = document.getElementById("error"); e.textContent = text; e.hidden = !text; };
  const wipe = async () => {
    if (session) { await fetch(`/api/kiosk/sessions/${session}`, {method: "DELETE", headers: headers()}); }
    session = challenge = null; document.getElementById("pin").value = ""; show("step-start");
  };
  const touch = () => { clearTimeout(timer); timer = setTimeout(() => { wipe(); error("一定時間操作がなかったため終了しました。"); }, window.kioskTimeoutMs || TIMEOUT_MS); };
  const call = async (path, body) => {
    const r = await fetch(path, {method: "POST", headers: headers(), body: JSON.stringify(body || {})});
    if (!r.ok) { const p = await r.json(); throw new Error(p.message || "エラー"); }
    return r;
  };
  document.getElementById("start").onclick = async () => {
    error(""); touch();
    try { const d = await (await call("/api/kiosk/sessions")).json(); session = d.session_id; challenge = d.challenge; show("step-pin"); }
    catch (e) { error(e.message); }
  };
  document.getElementById("pin-ok").onclick = async () => {
    clearTimeout(timer);
    const pin = document.getElementById("pin").value; document.getElementById("pin").value = "";
    let signature;
    try { signature = await window.kibanCard.sign(pin, challenge); }
    catch (e) { error(e.message || "暗証番号が違います。"); touch(); return; }
    try {
      const menu = await (await call(`/api/kiosk/sessions/${session}/authenticate`,
        {challenge, certificate: await window.kibanCard.certificate(), signature})).json();
      const box = document.getElementById("menu"); box.textContent = "";
      for (const item of menu.documents) {
        const b = document.createElement("button"); b.type = "button"; b.dataset.type = item.document_type;
        b.textContent = `${item.name}（${item.fee}円）`;
        b.onclick = () => pick(item.document_type); box.appendChild(b);
      }
      show("step-menu"); touch();
    } catch (e) { error(e.message); await wipe(); }
  };
  const pick = async (type) => {
    clearTimeout(timer);  // no timeout while the centre answers; the clock restarts after
    try {
      const r = await call(`/api/kiosk/sessions/${session}/documents`,
        {document_type: type, household: document.getElementById("household").checked});
      window.kioskPrinted = (window.kioskPrinted || []).concat([r.headers.get("X-Kiosk-Serial")]);
      document.getElementById("done-text").textContent = `印刷しました（証明書番号 ${r.headers.get("X-Kiosk-Serial")}）。`;
      show("step-done"); touch();
    } catch (e) { error(e.message); touch(); }
  };
  document.getElementById("finish").onclick = async () => { clearTimeout(timer); await wipe(); };
})();
