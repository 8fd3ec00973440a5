// The session page's player: a recorded cast (speed, seek and idle-time limit) or a live view
// (asciinema-player's eventsource driver, no buffering so output shows as it arrives).
(function () {
  "use strict";
  var el = document.getElementById("player");
  if (!el || !window.AsciinemaPlayer) { return; }
  var player = null;
  function options() {
    var speed = document.getElementById("speed");
    var idle = document.getElementById("idle");
    var opts = { fit: "width", controls: true, theme: "asciinema" };
    if (speed) { opts.speed = parseFloat(speed.value) || 1; }
    if (idle && idle.value) { opts.idleTimeLimit = parseFloat(idle.value); }
    return opts;
  }
  function create(autoPlay) {
    if (player) { player.dispose(); }
    var opts = options();
    opts.autoPlay = autoPlay;
    if (el.dataset.live) {
      opts.autoPlay = true;
      player = AsciinemaPlayer.create(
        { driver: "eventsource", url: el.dataset.live, bufferTime: 0 }, el, opts);
    } else {
      player = AsciinemaPlayer.create(el.dataset.cast, el, opts);
    }
    window.stockadePlayer = player;
  }
  create(true);
  ["speed", "idle"].forEach(function (id) {
    var control = document.getElementById(id);
    if (control) { control.addEventListener("change", function () { create(true); }); }
  });
})();
