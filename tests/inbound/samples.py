# ruff: noqa: E501 (report lines are copied as real MTAs write them)
"""Returned messages shaped like the real ones: DSNs as Postfix, Exim, Exchange
Online and Gmail write them, free-text bounces (qmail, Exim without DSN), ARF
reports as Yahoo's and Microsoft's feedback loops send them, and
out-of-office replies. The wording and field layout are copied from real
reports (addresses and hosts replaced); `{rp}` is the original's Return-Path,
`{trace}` its trace header value, `{rcpt}` the recipient."""

from __future__ import annotations

POSTFIX_DSN = """\
Return-Path: <>
Received: by mx.sender.test (Postfix) id 4Q1; Mon, 10 Jun 2024 10:00:02 +0000 (UTC)
Date: Mon, 10 Jun 2024 10:00:02 +0000 (UTC)
From: MAILER-DAEMON@mx.sender.test (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: {rp}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="4Q1.1718013602/mx.sender.test"
Content-Transfer-Encoding: 8bit
Message-Id: <20240610100002.4Q1@mx.sender.test>

This is a MIME-encapsulated message.

--4Q1.1718013602/mx.sender.test
Content-Description: Notification
Content-Type: text/plain; charset=utf-8

This is the mail system at host mx.sender.test.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

<{rcpt}>: host mx.example.test[192.0.2.25] said: 550 5.1.1
    <{rcpt}>: Recipient address rejected: User unknown in local recipient
    table (in reply to RCPT TO command)

--4Q1.1718013602/mx.sender.test
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.sender.test
X-Postfix-Queue-ID: 4Q1
X-Postfix-Sender: rfc822; {rp}
Arrival-Date: Mon, 10 Jun 2024 10:00:01 +0000 (UTC)

Final-Recipient: rfc822; {rcpt}
Original-Recipient: rfc822;{rcpt}
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.example.test
Diagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User
    unknown in local recipient table

--4Q1.1718013602/mx.sender.test
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

Return-Path: <{rp}>
X-Mailpipe-Trace: {trace}
From: News <news@sender.test>
To: {rcpt}
Subject: Spring offers
Message-ID: <camp-1@sender.test>

--4Q1.1718013602/mx.sender.test--
"""

EXIM_DSN = """\
Return-path: <>
From: Mail Delivery System <Mailer-Daemon@mx.sender.test>
To: {rp}
Subject: Mail delivery failed: returning message to sender
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary=1718013602-eximdsn-1

--1718013602-eximdsn-1
Content-type: text/plain; charset=us-ascii

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  {rcpt}
    host mx.example.test [192.0.2.25]
    SMTP error from remote mail server after RCPT TO:<{rcpt}>:
    552 5.2.2 mailbox is full

--1718013602-eximdsn-1
Content-type: message/delivery-status

Reporting-MTA: dns; mx.sender.test

Action: failed
Final-Recipient: rfc822;{rcpt}
Status: 5.0.0
Remote-MTA: dns; mx.example.test
Diagnostic-Code: smtp; 552 5.2.2 mailbox is full

--1718013602-eximdsn-1
Content-type: message/rfc822

Return-path: <{rp}>
X-Mailpipe-Trace: {trace}
From: news@sender.test
To: {rcpt}
Subject: Spring offers

Hello.

--1718013602-eximdsn-1--
"""

EXCHANGE_DSN = """\
From: postmaster@example.test
To: {rp}
Date: Mon, 10 Jun 2024 10:00:04 +0000
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="b9f1c3e2-0d2f-4c7a-9a65-2f5d3c1e7b10"
Subject: Undeliverable: Spring offers
Auto-Submitted: auto-replied
MIME-Version: 1.0

--b9f1c3e2-0d2f-4c7a-9a65-2f5d3c1e7b10
Content-Type: text/plain; charset="us-ascii"

Your message to {rcpt} couldn't be delivered.
{rcpt} wasn't found at example.test.

Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup'

--b9f1c3e2-0d2f-4c7a-9a65-2f5d3c1e7b10
Content-Type: message/delivery-status

Reporting-MTA: dns;AM0PR01MB1234.eurprd01.prod.exchangelabs.com
Received-From-MTA: dns;mx.sender.test
Arrival-Date: Mon, 10 Jun 2024 10:00:03 +0000

Original-Recipient: rfc822;{rcpt}
Final-Recipient: rfc822;{rcpt}
Action: failed
Status: 5.1.10
Diagnostic-Code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not
 found by SMTP address lookup

--b9f1c3e2-0d2f-4c7a-9a65-2f5d3c1e7b10
Content-Type: message/rfc822

Return-Path: <{rp}>
X-Mailpipe-Trace: {trace}
From: news@sender.test
To: <{rcpt}>
Subject: Spring offers

Hello.

--b9f1c3e2-0d2f-4c7a-9a65-2f5d3c1e7b10--
"""

GMAIL_DSN = """\
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: {rp}
Auto-Submitted: auto-replied
Subject: Delivery Status Notification (Failure)
MIME-Version: 1.0
Content-Type: multipart/report; boundary="000000000000e1f2"; report-type=delivery-status

--000000000000e1f2
Content-Type: multipart/related; boundary="000000000000e1f9"

--000000000000e1f9
Content-Type: multipart/alternative; boundary="000000000000e1fa"

--000000000000e1fa
Content-Type: text/plain; charset="UTF-8"

** Address not found **

Your message wasn't delivered to {rcpt} because the address couldn't be found,
or is unable to receive mail.

The response from the remote server was:
550 5.1.1 The email account that you tried to reach does not exist.

--000000000000e1fa--
--000000000000e1f9--
--000000000000e1f2
Content-Type: message/delivery-status

Reporting-MTA: dns; googlemail.com
Received-From-MTA: dns; news@sender.test
Arrival-Date: Mon, 10 Jun 2024 03:00:00 -0700 (PDT)
X-Original-Message-ID: <camp-1@sender.test>

Final-Recipient: rfc822; {rcpt}
Action: failed
Status: 5.1.1
Remote-MTA: dns; gmail-smtp-in.l.google.com. (2607:f8b0::1b, the server for the domain gmail.com.)
Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach does not exist. Please try
 550-5.1.1 double-checking the recipient's email address for typos or
 550-5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser
 a1si1234567qkb.1 - gsmtp
Last-Attempt-Date: Mon, 10 Jun 2024 03:00:01 -0700 (PDT)

--000000000000e1f2
Content-Type: text/rfc822-headers

Return-Path: <{rp}>
X-Mailpipe-Trace: {trace}
From: news@sender.test
To: {rcpt}
Subject: Spring offers

--000000000000e1f2--
"""

# A delay notice (Postfix "delay_warning_time"): a deferral, never a bounce.
POSTFIX_DELAY = (
    POSTFIX_DSN.replace("Undelivered Mail Returned to Sender", "Delayed Mail (still being retried)")
    .replace("Action: failed", "Action: delayed")
    .replace("Status: 5.1.1", "Status: 4.4.1")
    .replace(
        "Diagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User\n"
        "    unknown in local recipient table",
        "Diagnostic-Code: X-Postfix; connect to mx.example.test[192.0.2.25]:25:\n"
        "    Connection timed out",
    )
)

# A policy refusal relayed in a DSN: says nothing about the mailbox.
POLICY_DSN = POSTFIX_DSN.replace("Status: 5.1.1", "Status: 5.7.1").replace(
    "Diagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User\n"
    "    unknown in local recipient table",
    "Diagnostic-Code: smtp; 554 5.7.1 Service unavailable; Client host [198.51.100.7]\n"
    "    blocked using zen.spamhaus.org",
)

QMAIL_BOUNCE = """\
Return-Path: <>
From: MAILER-DAEMON@mx.sender.test
To: {rp}
Subject: failure notice

Hi. This is the qmail-send program at mx.sender.test.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<{rcpt}>:
192.0.2.25 does not like recipient.
Remote host said: 550 5.1.1 <{rcpt}>... User unknown
Giving up on 192.0.2.25.

--- Below this line is a copy of the message.

Return-Path: <{rp}>
From: news@sender.test
To: {rcpt}
Subject: Spring offers
"""

YAHOO_ARF = """\
From: staff@hotmail.test
To: {fbl}
Subject: FW: Spring offers
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report;
\tboundary="part1_13d.2e68ed54_boundary"

--part1_13d.2e68ed54_boundary
Content-Type: text/plain; charset="US-ASCII"
Content-Transfer-Encoding: 7bit

This is an email abuse report for an email message received from IP
192.0.2.1 on Thu, 8 Mar 2005 14:00:00 EDT.
For more information about this format please see
http://www.mipassoc.org/arf/.

--part1_13d.2e68ed54_boundary
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: Yahoo!-Mail-Feedback/2.0
Version: 1
Original-Mail-From: <{rp}>
Original-Rcpt-To: <{rcpt}>
Arrival-Date: Thu, 8 Mar 2005 14:00:00 EDT
Source-IP: 192.0.2.1
Reported-Domain: sender.test

--part1_13d.2e68ed54_boundary
Content-Type: message/rfc822
Content-Disposition: inline

Return-Path: <{rp}>
X-Mailpipe-Trace: {trace}
From: <news@sender.test>
To: <{rcpt}>
Subject: Spring offers
Message-ID: <camp-1@sender.test>

Hello.

--part1_13d.2e68ed54_boundary--
"""

# Microsoft JMRP: the recipient redacted; only the original's headers attribute it.
REDACTED_ARF = """\
From: jmrp@microsoft.test
To: {fbl}
Subject: complaint about message from 192.0.2.1
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="jmrp"

--jmrp
Content-Type: text/plain

This is an email abuse report.

--jmrp
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: Microsoft JMRP
Version: 1.0

--jmrp
Content-Type: text/rfc822-headers

Return-Path: <{rp}>
X-Mailpipe-Trace: {trace}
From: news@sender.test
To: redacted@redacted
Subject: Spring offers

--jmrp--
"""

OUT_OF_OFFICE = """\
From: Ann Example <{rcpt}>
To: {rp}
Subject: Automatic reply: Spring offers
Auto-Submitted: auto-replied
X-MS-Exchange-Inbox-Rules-Loop: {rcpt}
Content-Type: text/plain; charset=utf-8

I am out of the office until 2 July with limited access to email.
For urgent matters, mail 550 5.1.1 help@example.test.
"""

VACATION_NO_HEADERS = """\
From: Bob <{rcpt}>
To: {rp}
Subject: Abwesenheitsnotiz: Spring offers
Content-Type: text/plain; charset=utf-8

Ich bin bis 2. Juli nicht im Büro.
"""

X_AUTOREPLY = """\
From: {rcpt}
To: {rp}
Subject: Re: Spring offers
X-Autoreply: yes
Precedence: auto_reply

Thanks, we got your message.
"""

NOT_A_REPORT = """\
From: someone@else.test
To: {rp}
Subject: hello

Is this address real?
"""


def fill(template: str, *, rp: str, rcpt: str, trace: str = "", fbl: str = "") -> bytes:
    return template.format(rp=rp, rcpt=rcpt, trace=trace, fbl=fbl).replace("\n", "\r\n").encode()
