// The answer edits the web client makes per published track (no browser needed).

import { test } from "node:test";
import assert from "node:assert/strict";
import { dropRed, mediaSections, setPtime } from "../protocol.js";

const ANSWER = [
  "v=0",
  "o=- 1 2 IN IP4 127.0.0.1",
  "s=-",
  "t=0 0",
  "m=audio 9 UDP/TLS/RTP/SAVPF 63 111",
  "a=mid:0",
  "a=rtpmap:63 red/48000/2",
  "a=fmtp:63 111/111",
  "a=rtpmap:111 opus/48000/2",
  "a=rtcp-fb:111 transport-cc",
  "a=fmtp:111 minptime=10;useinbandfec=1",
  "m=audio 9 UDP/TLS/RTP/SAVPF 63 111",
  "a=mid:2",
  "a=rtpmap:63 red/48000/2",
  "a=fmtp:63 111/111",
  "a=rtpmap:111 opus/48000/2",
  "",
].join("\r\n");

test("dropRed takes RED out of one m-section only", () => {
  const out = dropRed(ANSWER, "0");
  const [, first, second] = out.split(/\r\n(?=m=)/);
  assert.match(first, /^m=audio 9 UDP\/TLS\/RTP\/SAVPF 111\r\n/);
  assert.doesNotMatch(first, /a=(rtpmap|fmtp):63/);
  assert.match(first, /a=rtpmap:111 opus\/48000\/2/);
  assert.match(first, /a=fmtp:111 minptime=10;useinbandfec=1/);
  assert.match(second, /^m=audio 9 UDP\/TLS\/RTP\/SAVPF 63 111\r\n/);
  assert.match(second, /a=rtpmap:63 red\/48000\/2/);
  assert.equal(dropRed(out, "0"), out, "nothing left to drop");
});

test("setPtime sets the frame duration of one m-section", () => {
  const out = setPtime(setPtime(ANSWER, "2", 40), "2", 60);
  const [, first, second] = out.split(/\r\n(?=m=)/);
  assert.doesNotMatch(first, /a=ptime/);
  assert.equal((second.match(/a=ptime:/g) || []).length, 1);
  assert.match(second, /a=mid:2\r\na=ptime:60/);
});

test("mediaSections names each m-section by kind and mid, in order", () => {
  assert.equal(mediaSections(ANSWER), "audio:0 audio:2");
  const more = ANSWER + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\n";
  assert.equal(mediaSections(more), "audio:0 audio:2 video:3");
  assert.notEqual(mediaSections(more), mediaSections(ANSWER));
});
