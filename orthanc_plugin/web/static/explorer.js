// RT Gateway panel inside Orthanc Explorer (jQuery Mobile): plans of the patient or study shown,
// with "Send to..." and recent jobs, and a link to the gateway page.
// Every value from DICOM or from the server goes in as text (.text(), .val(), text nodes): a plan
// label such as <img onerror=...> must show as those characters, never become markup.
(function () {
  function text(value) { return document.createTextNode(value === null || value === undefined ? '' : String(value)); }

  function checkbox(className, value) {
    return $('<input type="checkbox" data-role="none">').addClass(className).val(value);
  }

  function panel(filterKey, filterValue) {
    var box = $('<div class="rtgw-panel"></div>').css({ margin: '1em 0', padding: '0.6em', border: '1px solid #ccd', borderRadius: '6px' });
    var plansBox = $('<div class="rtgw-plans"></div>').text('Loading…');
    var targetsBox = $('<div class="rtgw-targets"></div>');
    var jobsBox = $('<div class="rtgw-jobs"></div>');
    var sendButton = $('<button class="rtgw-send" data-role="none"></button>').text('Send to…');
    var link = $('<a target="_blank"></a>').attr('href', '../rt-gateway/ui/').text('Open the RT Gateway page');
    box.append($('<h3></h3>').css('margin', '0.2em 0').text('RT plans'), plansBox, targetsBox, sendButton, jobsBox,
      $('<p></p>').append(link));

    $.getJSON('../rt-gateway/plans', function (plans) {
      plans = (plans.plans || plans).filter(function (p) { return !filterValue || p[filterKey] === filterValue; });
      var list = $('<ul></ul>');
      plans.forEach(function (p) {
        var objects = (p.objects || []).map(function (o) { return o.modality || o; }).join(', ');
        var description = ' ' + (p.label || '') + ' ' + (p.complete ? '(complete)' : '(incomplete)') + ' — ' + objects;
        list.append($('<li></li>').append($('<label></label>').append(checkbox('rtgw-plan', p.id), text(description))));
      });
      plansBox.empty().append(plans.length ? list : text('No RT plans.'));
    }).fail(function () { plansBox.text('RT plans are not available.'); });

    $.getJSON('../modalities', function (targets) {
      targets.forEach(function (t) {
        targetsBox.append($('<label></label>').css('margin-right', '1em').append(checkbox('rtgw-target', t), text(' ' + t)));
      });
    });

    sendButton.click(function () {
      var plans = box.find('.rtgw-plan:checked').map(function () { return this.value; }).get();
      var targets = box.find('.rtgw-target:checked').map(function () { return this.value; }).get();
      $.ajax({
        url: '../rt-gateway/plans/send', type: 'POST', contentType: 'application/json',
        // Required by the gateway for any request that changes something (cross-site protection).
        headers: { 'X-Requested-With': 'rt-gateway-explorer' },
        data: JSON.stringify({ plans: plans, targets: targets }),
        success: function (answer) {
          var jobs = answer.jobs || answer;
          jobsBox.text('Queued job(s): ' + jobs.map(function (j) { return j.id || j; }).join(', '));
        },
        error: function (xhr) { jobsBox.text('Not sent: ' + xhr.responseText); }
      });
    });
    return box;
  }

  function showOn(pageId, resource, patientIdOf) {
    $(pageId).live('pagebeforeshow', function () {
      $(pageId + ' .rtgw-panel').remove();
      var uuid = $.mobile.pageData && $.mobile.pageData.uuid;
      if (!uuid) return;
      $.getJSON('../' + resource + '/' + encodeURIComponent(uuid), function (item) {
        $(pageId + ' .ui-content, ' + pageId + ' [data-role=content]').first().append(panel('patient_id', patientIdOf(item)));
      });
    });
  }
  showOn('#patient', 'patients', function (patient) { return patient.MainDicomTags.PatientID; });
  showOn('#study', 'studies', function (study) { return study.PatientMainDicomTags.PatientID; });
})();
