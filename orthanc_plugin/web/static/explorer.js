// RT Gateway panel inside Orthanc Explorer (jQuery Mobile): plans of the patient or study shown,
// with "Send to..." and recent jobs, and a link to the gateway page.
(function () {
  function panel(filterKey, filterValue) {
    var box = $('<div class="rtgw-panel" style="margin:1em 0;padding:0.6em;border:1px solid #ccd;border-radius:6px">' +
      '<h3 style="margin:0.2em 0">RT plans</h3><div class="rtgw-plans">Loading…</div>' +
      '<div class="rtgw-targets"></div><button class="rtgw-send" data-role="none">Send to…</button>' +
      '<div class="rtgw-jobs"></div><p><a href="../rt-gateway/ui/" target="_blank">Open the RT Gateway page</a></p></div>');
    $.getJSON('../rt-gateway/plans', function (plans) {
      plans = (plans.plans || plans).filter(function (p) { return !filterValue || p[filterKey] === filterValue; });
      var list = $('<ul></ul>');
      plans.forEach(function (p) {
        var objects = (p.objects || []).map(function (o) { return o.modality || o; }).join(', ');
        list.append($('<li></li>').append(
          $('<label></label>').append($('<input type="checkbox" data-role="none" class="rtgw-plan">').val(p.id))
            .append(' ' + (p.label || '') + ' ' + (p.complete ? '(complete)' : '(incomplete)') + ' — ' + objects)));
      });
      box.find('.rtgw-plans').empty().append(plans.length ? list : 'No RT plans.');
    }).fail(function () { box.find('.rtgw-plans').text('RT plans are not available.'); });
    $.getJSON('../modalities', function (targets) {
      targets.forEach(function (t) {
        box.find('.rtgw-targets').append($('<label style="margin-right:1em"></label>')
          .append($('<input type="checkbox" data-role="none" class="rtgw-target">').val(t)).append(' ' + t));
      });
    });
    box.find('.rtgw-send').click(function () {
      var plans = box.find('.rtgw-plan:checked').map(function () { return this.value; }).get();
      var targets = box.find('.rtgw-target:checked').map(function () { return this.value; }).get();
      $.ajax({ url: '../rt-gateway/plans/send', type: 'POST', data: JSON.stringify({ plans: plans, targets: targets }),
        success: function (answer) {
          var jobs = answer.jobs || answer;
          box.find('.rtgw-jobs').text('Queued job(s): ' + jobs.map(function (j) { return j.id || j; }).join(', '));
        },
        error: function (xhr) { box.find('.rtgw-jobs').text('Not sent: ' + xhr.responseText); } });
    });
    return box;
  }

  $('#patient').live('pagebeforeshow', function () {
    $('#patient .rtgw-panel').remove();
    var uuid = $.mobile.pageData && $.mobile.pageData.uuid;
    if (!uuid) return;
    $.getJSON('../patients/' + uuid, function (patient) {
      $('#patient .ui-content, #patient [data-role=content]').first().append(panel('patient_id', patient.MainDicomTags.PatientID));
    });
  });
  $('#study').live('pagebeforeshow', function () {
    $('#study .rtgw-panel').remove();
    var uuid = $.mobile.pageData && $.mobile.pageData.uuid;
    if (!uuid) return;
    $.getJSON('../studies/' + uuid, function (study) {
      $('#study .ui-content, #study [data-role=content]').first().append(panel('patient_id', study.PatientMainDicomTags.PatientID));
    });
  });
})();
