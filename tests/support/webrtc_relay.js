// The browser side of the WebRTC relay test (tests/support/chromium.py evaluates it in headless Chromium).
//
// Two RTCPeerConnections in one page, both with iceTransportPolicy "relay", so the only candidates are relayed ones
// from the TURN servers given; they exchange offer/answer and candidates directly, open a data channel and send
// messages both ways. The result says what the selected candidate pair was: the candidate types of both ends and the
// protocol each browser used to reach its TURN server (relayProtocol: "udp", "tcp" or "tls").
//
// relayRoundTrip(iceServers, messages, timeoutMs) -> Promise<{echoes, sent, local, remote, state}>
async function relayRoundTrip(iceServers, messages, timeoutMs) {
  const config = {iceServers: iceServers, iceTransportPolicy: "relay"};
  const a = new RTCPeerConnection(config);
  const b = new RTCPeerConnection(config);
  const errors = [];
  a.onicecandidate = (e) => { if (e.candidate) b.addIceCandidate(e.candidate).catch((x) => errors.push(String(x))); };
  b.onicecandidate = (e) => { if (e.candidate) a.addIceCandidate(e.candidate).catch((x) => errors.push(String(x))); };
  a.onicecandidateerror = (e) => errors.push(`a: ${e.url} ${e.errorCode} ${e.errorText}`);
  b.onicecandidateerror = (e) => errors.push(`b: ${e.url} ${e.errorCode} ${e.errorText}`);
  const timeout = new Promise((_, reject) => setTimeout(
    () => reject(new Error(`timed out: ice ${a.iceConnectionState}/${b.iceConnectionState}; ${errors.join("; ")}`)),
    timeoutMs));

  const channel = a.createDataChannel("echo");
  b.ondatachannel = (e) => { e.channel.onmessage = (m) => e.channel.send("echo:" + m.data); };
  const echoes = [];
  const allEchoed = new Promise((resolve) => {
    channel.onmessage = (m) => { echoes.push(m.data); if (echoes.length === messages) resolve(); };
  });
  const opened = new Promise((resolve) => { channel.onopen = resolve; });

  await a.setLocalDescription(await a.createOffer());
  await b.setRemoteDescription(a.localDescription);
  await b.setLocalDescription(await b.createAnswer());
  await a.setRemoteDescription(b.localDescription);
  await Promise.race([opened, timeout]);
  for (let i = 0; i < messages; i++) channel.send("message " + i);
  await Promise.race([allEchoed, timeout]);

  const stats = await a.getStats();
  let pair = null;
  stats.forEach((s) => { if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId); });
  if (!pair) stats.forEach((s) => { if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s; });
  const describe = (id) => {
    const c = stats.get(id);
    return c ? {candidateType: c.candidateType, relayProtocol: c.relayProtocol || null, protocol: c.protocol,
                address: c.address, port: c.port, url: c.url || null} : null;
  };
  const result = {echoes: echoes, sent: messages, state: a.iceConnectionState,
                  local: pair && describe(pair.localCandidateId), remote: pair && describe(pair.remoteCandidateId),
                  errors: errors};
  a.close();
  b.close();
  return result;
}
