// RT Gateway panel inside Orthanc Explorer (jQuery Mobile): the plans of the patient or of the
// study shown (asked of the server for that patient or study only, never the whole list), and a
// link to the gateway page opened there. Sending happens on the gateway page, behind its
// confirmation; this panel only shows and links.
// Every value from DICOM or from the server goes in as text (.text(), text nodes): a plan label
// such as <img onerror=...> must show as those characters, never become markup.
(function () {
  function text(value) { return document.createTextNode(value === null || value === undefined ? '' : String(value)); }

  // A failed answer in words: the gateway's {"error": ...}, else the HTTP status.
  function reason(xhr) {
    try { var body = JSON.parse(xhr.responseText); if (body && body.error) return body.error; } catch (e) { /* not JSON */ }
    return xhr.status ? 'HTTP ' + xhr.status + (xhr.statusText ? ' ' + xhr.statusText : '') : 'no answer from the gateway';
  }

  function panel(filter) {
    var box = $('<div class="rtgw-panel"></div>').css({ margin: '1em 0', padding: '0.6em', border: '1px solid #ccd', borderRadius: '6px' });
    var plansBox = $('<div class="rtgw-plans"></div>').text('Loading…');
    var targetsBox = $('<div class="rtgw-targets"></div>');
    var pageUrl = '../rt-gateway/ui/?' + $.param(filter) + '#plans';
    var link = $('<a target="_blank" class="rtgw-open"></a>').attr('href', pageUrl).text('Open in the RT Gateway page (to view and send)');
    box.append($('<h3></h3>').css('margin', '0.2em 0').text('RT plans'), plansBox, targetsBox, $('<p></p>').append(link));

    $.getJSON('../rt-gateway/worklist', $.extend({ per_page: 50 }, filter), function (answer) {
      var list = $('<ul></ul>');
      answer.plans.forEach(function (p) {
        var counts = Object.keys(p.counts).map(function (m) { return m + ' ' + p.counts[m]; }).join(', ');
        var state = p.complete ? 'complete' : 'incomplete, missing ' + p.missing.join('; ');
        var went = p.destinations.map(function (d) { return d.target + ': ' + ({ done: 'sent', dead: 'parked', pending: 'waiting', running: 'sending' }[d.state] || d.state); }).join(', ');
        list.append($('<li class="rtgw-plan"></li>').append(
          $('<strong></strong>').text(p.label || '(no label)'),
          text(' ' + (p.name || '') + ' — ' + state + ' — ' + counts + (went ? ' — ' + went : ''))));
      });
      var more = answer.total > answer.plans.length ? ' (' + answer.plans.length + ' of ' + answer.total + ' shown)' : '';
      plansBox.empty().append(answer.plans.length ? list : text('No RT plans here.'), text(more));
    }).fail(function (xhr) { plansBox.text('RT plans could not be loaded: ' + reason(xhr)); });

    $.getJSON('../modalities', function (targets) {
      targetsBox.text('Destinations: ' + (targets.length ? targets.join(', ') : 'none configured'));
    }).fail(function (xhr) { targetsBox.text('Destinations could not be listed: ' + reason(xhr)); });
    return box;
  }

  function showOn(pageId, resource, filterOf) {
    $(pageId).live('pagebeforeshow', function () {
      $(pageId + ' .rtgw-panel').remove();
      var uuid = $.mobile.pageData && $.mobile.pageData.uuid;
      if (!uuid) return;
      $.getJSON('../' + resource + '/' + encodeURIComponent(uuid), function (item) {
        $(pageId + ' .ui-content, ' + pageId + ' [data-role=content]').first().append(panel(filterOf(item)));
      });
    });
  }
  showOn('#patient', 'patients', function (patient) { return { patient: patient.MainDicomTags.PatientID }; });
  showOn('#study', 'studies', function (study) {
    return { patient: study.PatientMainDicomTags.PatientID, study: study.MainDicomTags.StudyInstanceUID };
  });
})();
